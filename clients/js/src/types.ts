// The service's wire shapes (docs/api.md), as JSON gives them: times are ISO 8601 strings, but a
// stream token's or a signed link's `expires_at` is Unix seconds.

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
  /** The app's labels for the job (`user:123`), fixed at creation; `[]` when none. */
  tags: string[];
  /** The app's own JSON object, fixed at creation, never sent to fal; `{}` when none. */
  metadata: Record<string, unknown>;
  /** Our estimate of fal's bill (not fal's invoice); null when fal gave no price for the model. */
  cost: JobCost | null;
}

/** What a job costs at fal, from fal's unit price for its model (docs/api.md, "The job"). */
export interface JobCost {
  /** At submit, from the input; null when the input does not say how many units. */
  estimated: number | null;
  /** Once ended: the units the output shows times `unit_price`; 0 for a failed job; null while it
   * runs, for a cancelled job, or when the units are unknown. */
  final: number | null;
  /** `image`, `megapixel`, `second` (of video), `video`, or fal's own word. */
  unit: string;
  quantity: number | null;
  /** fal's price when the job was submitted. */
  unit_price: number;
  currency: string;
}

/** A file uploaded for job inputs (POST /api/uploads): name it `upload:<upload_id>` in an input. */
export interface Upload {
  upload_id: string;
  /** Read from the bytes, not from the Content-Type sent. */
  content_type: string;
  size: number;
  sha256: string;
  /** An image's pixels; null for video and audio. */
  width: number | null;
  height: number | null;
  created_at: string;
  /** When the sweep removes it (ISO 8601), unless an open job still uses it; renewed by uploading it again. */
  expires_at: string;
}

/** `upload:<upload_id>`: what a job's input names an upload by (the service hands fal a URL). */
export function uploadRef(upload: Pick<Upload, "upload_id"> | string): string {
  return `upload:${typeof upload === "string" ? upload : upload.upload_id}`;
}

export type FileKind = "image" | "video" | "audio";

/** One input field of a model, from its schema at fal: enough to draw a form. */
export interface ModelField {
  name: string;
  /** JSON Schema's type; for a field of several shapes, the one with choices. */
  type: string | null;
  required: boolean;
  default: unknown;
  enum: unknown[] | null;
  description: string | null;
  minimum: number | null;
  maximum: number | null;
  /** The field takes a file of this kind, by URL or `upload:<id>`. */
  file: FileKind | null;
}

/** One allowed model (GET /api/models). */
export interface ModelInfo {
  model_id: string;
  /** The kind of output it makes. */
  type: JobType;
  /** Its input fields in fal's order; null while the service never had its schema. */
  fields: ModelField[] | null;
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
