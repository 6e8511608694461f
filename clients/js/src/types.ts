// The service's wire shapes (docs/api.md), as JSON gives them: times are ISO 8601 strings,
// `expires_at` values are Unix seconds.

export type JobStatus = "pending" | "in_progress" | "completed" | "failed" | "cancelled" | "deleted";
export type JobType = "image" | "video";
export type OutputKind = "image" | "video" | "audio" | "other";
export type OutputStatus = "pending" | "stored" | "failed" | "deleted";

/** The statuses a job never leaves (but `deleted`, which only a finished job may still become). */
export const TERMINAL_STATUSES: ReadonlySet<JobStatus> = new Set<JobStatus>(["completed", "failed", "cancelled", "deleted"]);

export interface LogLine {
  message: string;
  level?: string | null;
  source?: string | null;
  timestamp?: string | null;
}

/** One media file of a completed job, and our durable copy of it. */
export interface JobOutput {
  index: number;
  kind: OutputKind;
  /** pending: being copied (its url redirects to fal's); stored: served from our store. */
  status: OutputStatus;
  /** Our own URL for the file, `/api/jobs/{request_id}/outputs/{index}` (relative to the service). */
  url: string;
  content_type?: string | null;
  size?: number | null;
  sha256?: string | null;
  error?: string | null;
}

/** A job as streams carry it. */
export interface Job {
  request_id: string;
  user_id: string;
  model_id: string;
  type: JobType;
  input: Record<string, unknown>;
  status: JobStatus;
  queue_position: number | null;
  logs: LogLine[] | null;
  /** Exactly what fal returned. */
  result: unknown;
  error: string | null;
  error_type: string | null;
  mode: "webhook" | "polling";
  /** Grows with every change: keep the highest per job. */
  version: number;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
  outputs: JobOutput[];
  /** The job's tags, on a service that has them. */
  tags?: string[];
  /** The app's own data, stored and returned, never sent to fal (on a service that has it). */
  metadata?: Record<string, unknown> | null;
  /** Our estimate of fal's bill for the job (not fal's invoice); null when fal gave no price for its
   * model (absent on a service without costs). */
  cost?: JobCost | null;
}

/** What a job costs at fal's unit price for its model. */
export interface JobCost {
  /** At submit, from the input; null when the input does not say how many units it bills. */
  estimated: number | null;
  /** Once ended: the units the output shows times unit_price; 0 when failed; null until then. */
  final: number | null;
  /** image, megapixel, second (of video), video, or fal's own word. */
  unit: string;
  quantity: number | null;
  unit_price: number;
  currency: string;
}

export interface JobLinks {
  self: string;
  events: string;
  result: string;
  cancel: string;
}

/** A job as the HTTP API answers it: with its links. */
export interface JobView extends Job {
  links: JobLinks;
}

/** The answer to a create: the job, and a stream token for its event stream. */
export interface CreatedJob extends JobView {
  stream_token: string;
  stream_token_expires_at: number;
}

export interface CreateJobRequest {
  type: JobType;
  model_id: string;
  input: Record<string, unknown>;
  /** Up to 10 tags (e.g. `user:123`), for listing and streaming one end user's jobs. */
  tags?: string[];
  /** A JSON object of the app's own (at most 4 KiB), stored and returned, never sent to fal. */
  metadata?: Record<string, unknown>;
}

export interface JobPage {
  jobs: JobView[];
  next_cursor: string | null;
}

export interface ListJobsParams {
  status?: JobStatus;
  type?: JobType;
  /** Only the jobs carrying this tag. */
  tag?: string;
  /** Jobs per page (the service's default when unset). */
  limit?: number;
  /** Start from this page (a `next_cursor`). */
  cursor?: string;
  signal?: AbortSignal;
}

/** What a stream token opens: the user's stream, one job's, or the streams of one tag's jobs. */
export type StreamTokenScope =
  | { scope: "user" }
  | { scope: "job"; request_id: string }
  | { scope: "tag"; tag: string };

export interface StreamToken {
  token: string;
  /** Unix seconds. */
  expires_at: number;
  /** The stream's URL with `?token=`, made absolute against the client's base URL. */
  url: string;
}

export interface OutputLink {
  /** A signed URL that opens that one output, absolute against the client's base URL. */
  url: string;
  expires_at: number;
}

/** The job's last event: its status is final and every output has settled (a job stream ends there). */
export function isSettled(job: Pick<Job, "status" | "outputs">): boolean {
  return TERMINAL_STATUSES.has(job.status) && !(job.outputs ?? []).some((output) => output.status === "pending");
}

export function isTerminal(job: Pick<Job, "status">): boolean {
  return TERMINAL_STATUSES.has(job.status);
}
