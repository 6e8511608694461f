// The server side: holds the API key. Every call goes through `call`, which retries what is safe to
// retry; `streamJob` reads a job's event stream over fetch and resumes it by its last id.

import { FalJobsError, FalJobsWaitTimeout } from "./errors.js";
import { abortReason, backoff, errorFrom, joinUrl, query, randomId, sleep } from "./http.js";
import type { FetchLike, ParseJson } from "./http.js";
import { readSse, SseParser } from "./sse.js";
import { isSettled, isTerminal } from "./types.js";
import type {
  CreatedJob, CreateJobRequest, Job, JobPage, JobView, ListJobsParams, ModelInfo, OutputLink, StreamToken,
  StreamTokenScope, Upload,
} from "./types.js";

export interface RetryInfo {
  /** 1 for the first retry. */
  attempt: number;
  /** How long the client waits before it: the answer's Retry-After when it gave one. */
  delayMs: number;
  /** The answer's status; 0 when no answer came. */
  status: number;
  error: string;
}

export interface FalJobsClientOptions {
  /** The service, e.g. `https://jobs.example.com`. */
  baseUrl: string;
  apiKey: string;
  /** Retries of one call after a transport error, a 503, or a create's 409 (its first try still in flight). */
  retries?: number;
  /** The first wait of a backoff (doubled per retry), when the answer gave no Retry-After. */
  retryDelayMs?: number;
  /** A Retry-After longer than this is not waited out: the error is thrown, with its `retryAfterMs`. */
  maxRetryAfterMs?: number;
  /** Told before each retry of a call, and before each new try to open a stream that was refused
   * (429, 5xx) or could not connect. */
  onRetry?: (info: RetryInfo) => void;
  fetch?: FetchLike;
  /** JSON.parse unless given: a lossless parser keeps integers beyond 2^53 (fal's seeds) exact. */
  parseJson?: ParseJson;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface CreateJobOptions extends CallOptions {
  /** A new random key unless given: the same key and body answer the same job, and fal is paid once. */
  idempotencyKey?: string;
}

/** What `upload` sends: the whole file, or a stream of it (a stream is sent once, never retried). */
export type UploadData = Blob | ArrayBuffer | ArrayBufferView | ReadableStream<Uint8Array>;

export interface UploadOptions extends CallOptions {
  /** Sent as Content-Type (the Blob's own type, else application/octet-stream); the service reads
   * the file's real type from its bytes either way. */
  contentType?: string;
}

export interface StreamJobOptions extends CallOptions {
  /** Resume after this event id (an id the service sent; opaque). */
  lastEventId?: string;
}

export interface WaitForJobOptions extends CallOptions {
  /** Give up after this long with FalJobsWaitTimeout (no limit unless given). */
  timeoutMs?: number;
  /** Each newer state of the job as it arrives. */
  onUpdate?: (job: Job) => void;
}

const MAX_BACKOFF_MS = 8_000;

/** A listing: iterate it for the jobs (pages are fetched as needed), or `pages()` for the pages. */
export class JobList implements AsyncIterable<JobView> {
  constructor(private readonly fetchPage: (cursor: string | undefined) => Promise<JobPage>,
              private readonly cursor: string | undefined) {}

  async *pages(): AsyncGenerator<JobPage> {
    let cursor = this.cursor;
    do {
      const page = await this.fetchPage(cursor);
      yield page;
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<JobView> {
    for await (const page of this.pages()) yield* page.jobs;
  }
}

export class FalJobsClient {
  readonly baseUrl: string;
  private readonly apiKey: string;
  private readonly retries: number;
  private readonly retryDelayMs: number;
  private readonly maxRetryAfterMs: number;
  private readonly onRetry: ((info: RetryInfo) => void) | undefined;
  private readonly fetchImpl: FetchLike;
  private readonly parse: ParseJson;

  constructor(options: FalJobsClientOptions) {
    if (!options.baseUrl) throw new TypeError("baseUrl: the service's URL, e.g. https://jobs.example.com");
    if (!options.apiKey) throw new TypeError("apiKey: an API key of the service (keep it on the server)");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.retries = options.retries ?? 3;
    this.retryDelayMs = options.retryDelayMs ?? 500;
    this.maxRetryAfterMs = options.maxRetryAfterMs ?? 60_000;
    this.onRetry = options.onRetry;
    this.fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.parse = options.parseJson ?? JSON.parse;
  }

  /** Submits a job (202: `pending`). Sends an Idempotency-Key, so its retries never pay fal twice. */
  createJob(request: CreateJobRequest, options: CreateJobOptions = {}): Promise<CreatedJob> {
    const headers = { "Content-Type": "application/json", "Idempotency-Key": options.idempotencyKey ?? randomId() };
    return this.call("POST", "/api/jobs", { body: JSON.stringify(request), headers, signal: options.signal, create: true });
  }

  getJob(requestId: string, options: CallOptions = {}): Promise<JobView> {
    return this.call("GET", jobPath(requestId), options);
  }

  /** fal's output of a completed job; 409 (FalJobsError) naming the state otherwise. */
  getResult(requestId: string, options: CallOptions = {}): Promise<unknown> {
    return this.call("GET", `${jobPath(requestId)}/result`, options);
  }

  /** One page of the caller's jobs, newest first. */
  getJobPage(params: ListJobsParams = {}): Promise<JobPage> {
    const { signal, ...filters } = params;
    return this.call("GET", `/api/jobs${query({ ...filters })}`, { signal });
  }

  /** The caller's jobs, newest first, over every page: `for await (const job of client.listJobs({tag}))`. */
  listJobs(params: ListJobsParams = {}): JobList {
    const { cursor, ...rest } = params;
    return new JobList((next) => this.getJobPage({ ...rest, ...(next ? { cursor: next } : {}) }), cursor);
  }

  /** Cancels at fal; 409 once the job finished. */
  cancelJob(requestId: string, options: CallOptions = {}): Promise<JobView> {
    return this.call("POST", `${jobPath(requestId)}/cancel`, options);
  }

  /** Removes a finished job's media (the job stays, `deleted`); 409 while it runs. */
  deleteJob(requestId: string, options: CallOptions = {}): Promise<JobView> {
    return this.call("DELETE", jobPath(requestId), options);
  }

  /** A short-lived token for a browser's EventSource (`subscribeJob`, `subscribeJobs`). */
  async createStreamToken(scope: StreamTokenScope, options: CallOptions = {}): Promise<StreamToken> {
    const token = await this.call<StreamToken>("POST", "/api/stream-tokens", {
      body: JSON.stringify(scope), headers: { "Content-Type": "application/json" }, signal: options.signal,
    });
    return { ...token, url: this.absolute(token.url) };
  }

  /**
   * Uploads a file for job inputs (POST /api/uploads, the raw bytes); name it in an input as
   * `upload:<upload_id>` (`uploadRef(upload)`). The same file again answers the same upload, so a
   * whole file (not a stream) is retried like any call. Refusals are FalJobsError: 413 too large,
   * 415 not a type the service takes, 422 too many pixels, 429 over the day's quota.
   */
  upload(data: UploadData, options: UploadOptions = {}): Promise<Upload> {
    const blobType = typeof Blob !== "undefined" && data instanceof Blob ? data.type : "";
    const contentType = options.contentType || blobType || "application/octet-stream";
    const stream = typeof ReadableStream !== "undefined" && data instanceof ReadableStream;
    return this.call("POST", "/api/uploads", {
      body: data as BodyInit, headers: { "Content-Type": contentType }, signal: options.signal, once: stream,
    });
  }

  /** The caller's uploads, newest first. */
  async listUploads(options: CallOptions = {}): Promise<Upload[]> {
    return (await this.call<{ uploads: Upload[] }>("GET", "/api/uploads", options)).uploads;
  }

  /** Removes an upload and its bytes (404 once gone). */
  async deleteUpload(uploadId: string, options: CallOptions = {}): Promise<void> {
    await this.call("DELETE", `/api/uploads/${encodeURIComponent(uploadId)}`, options);
  }

  /** The models the service accepts: the kind of output each makes, and its input fields. */
  listModels(options: CallOptions = {}): Promise<ModelInfo[]> {
    return this.call("GET", "/api/models", options);
  }

  /** A signed URL that opens output `index` of a job and nothing else (for `<img>`, `<video>`, sharing). */
  async outputLink(requestId: string, index: number, options: CallOptions = {}): Promise<OutputLink> {
    const link = await this.call<OutputLink>("POST", `${jobPath(requestId)}/outputs/${index}/link`, options);
    return { ...link, url: this.absolute(link.url) };
  }

  /**
   * The job's states as they change, from its snapshot until its last event (final status, every
   * output settled). A dropped connection is resumed by the last event id: nothing is lost, and
   * no version goes back. Refusals (429, 503) are waited out as their Retry-After says.
   */
  async *streamJob(requestId: string, options: StreamJobOptions = {}): AsyncGenerator<Job> {
    const { signal } = options;
    let lastEventId = options.lastEventId;
    let attempt = 0;
    let highest = -1;
    for (;;) {
      const opened = await this.openStream(requestId, lastEventId, attempt, signal);
      if (opened === "ended") return;
      if (opened === "retry") {
        attempt++;
        continue;
      }
      const parser = new SseParser();
      const messages = readSse(opened, parser);
      try {
        for (;;) {
          let next: IteratorResult<{ event: string; data: string; lastEventId: string }>;
          try {
            next = await messages.next();
          } catch (error) {
            if (signal?.aborted) throw abortReason(signal);
            break; // cut mid-stream: resume below
          }
          if (next.done) break;
          attempt = 0;
          if (next.value.lastEventId) lastEventId = next.value.lastEventId;
          if (next.value.event !== "job") continue;
          const job = this.parse(next.value.data) as Job;
          if (job.version > highest) {
            highest = job.version;
            yield job;
          }
          if (isSettled(job)) return;
        }
      } finally {
        await messages.return(undefined);
      }
      if (signal?.aborted) throw abortReason(signal);
      await sleep(backoff(attempt++, parser.retryMs ?? this.retryDelayMs, MAX_BACKOFF_MS), signal);
    }
  }

  /**
   * The job once it is completed, failed, cancelled or deleted, over its event stream (no polling).
   * FalJobsWaitTimeout past `timeoutMs`; the signal's reason when `signal` aborts.
   */
  async waitForJob(requestId: string, options: WaitForJobOptions = {}): Promise<Job> {
    const { signal, timeoutMs, onUpdate } = options;
    if (signal?.aborted) throw abortReason(signal);
    const controller = new AbortController();
    const onAbort = (): void => controller.abort(abortReason(signal!));
    signal?.addEventListener("abort", onAbort, { once: true });
    let timedOut = false;
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    let last: Job | null = null;
    try {
      for await (const job of this.streamJob(requestId, { signal: controller.signal })) {
        last = job;
        onUpdate?.(job);
        if (isTerminal(job)) return job;
      }
      // 204: it ended before a resume reached it.
      return last !== null && isTerminal(last) ? last : await this.getJob(requestId, { signal: controller.signal });
    } catch (error) {
      if (timedOut) throw new FalJobsWaitTimeout(last, timeoutMs!);
      throw error;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** The stream's body, or "ended" (204: resumed after its last event), or "retry" after waiting. */
  private async openStream(requestId: string, lastEventId: string | undefined, attempt: number,
                           signal: AbortSignal | undefined): Promise<ReadableStream<Uint8Array> | "ended" | "retry"> {
    const headers: Record<string, string> = { ...this.auth(), Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    let error: FalJobsError;
    try {
      const init: RequestInit = { headers, cache: "no-store" };
      if (signal) init.signal = signal;
      const response = await this.fetchImpl(joinUrl(this.baseUrl, `${jobPath(requestId)}/events`), init);
      if (response.status === 204) {
        await response.body?.cancel();
        return "ended";
      }
      if (response.ok && response.body) return response.body;
      error = await errorFrom(response, this.parse);
    } catch (thrown) {
      if (signal?.aborted) throw abortReason(signal);
      error = FalJobsError.network(thrown);
    }
    const retryable = error.status === 0 || error.status === 429 || error.status >= 500;
    if (!retryable) throw error;
    const delayMs = error.retryAfterMs ?? backoff(attempt, this.retryDelayMs, MAX_BACKOFF_MS);
    this.onRetry?.({ attempt: attempt + 1, delayMs, status: error.status, error: error.error });
    await sleep(delayMs, signal);
    return "retry";
  }

  private async call<T>(method: string, path: string,
                        options: { body?: BodyInit; headers?: Record<string, string>; signal?: AbortSignal | undefined;
                                   create?: boolean; once?: boolean }): Promise<T> {
    const { signal } = options;
    const init: RequestInit & { duplex?: "half" } = {
      method, headers: { ...this.auth(), Accept: "application/json", ...options.headers },
    };
    if (options.body !== undefined) init.body = options.body;
    // A stream body: fetch sends it as it is read (Node's fetch insists on saying so), and only once.
    if (options.once) init.duplex = "half";
    if (signal) init.signal = signal;
    for (let attempt = 0; ; attempt++) {
      let error: FalJobsError;
      try {
        const response = await this.fetchImpl(joinUrl(this.baseUrl, path), init);
        if (response.ok) {
          const text = await response.text();
          return (text ? this.parse(text) : null) as T;
        }
        error = await errorFrom(response, this.parse);
      } catch (thrown) {
        if (signal?.aborted) throw abortReason(signal);
        if (thrown instanceof SyntaxError) throw thrown;
        error = FalJobsError.network(thrown);
      }
      const delayMs = this.retryDelay(error, attempt, options.create === true);
      if (delayMs === undefined || attempt >= this.retries || options.once) throw error;
      this.onRetry?.({ attempt: attempt + 1, delayMs, status: error.status, error: error.error });
      await sleep(delayMs, signal);
    }
  }

  /** How long to wait before retrying after `error`, or undefined when it is not retried. */
  private retryDelay(error: FalJobsError, attempt: number, create: boolean): number | undefined {
    if (error.status === 0) return backoff(attempt, this.retryDelayMs, MAX_BACKOFF_MS);
    // A create's 409 "still in progress" is its own first try, not yet answered: asking again is safe.
    const inFlight = create && error.status === 409 && error.error === "idempotency_in_progress";
    if (error.status !== 503 && !inFlight) return undefined;
    const delayMs = error.retryAfterMs ?? backoff(attempt, this.retryDelayMs, MAX_BACKOFF_MS);
    return delayMs <= this.maxRetryAfterMs ? delayMs : undefined;
  }

  private auth(): Record<string, string> {
    return { Authorization: `Bearer ${this.apiKey}` };
  }

  private absolute(url: string): string {
    return /^https?:\/\//.test(url) ? url : joinUrl(this.baseUrl, url);
  }
}

function jobPath(requestId: string): string {
  return `/api/jobs/${encodeURIComponent(requestId)}`;
}

/** `new FalJobsClient(options)`. */
export function createClient(options: FalJobsClientOptions): FalJobsClient {
  return new FalJobsClient(options);
}
