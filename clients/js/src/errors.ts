import type { Job } from "./types.js";

// What the service answers for a status whose body is not its error shape (a proxy's HTML page).
const CODE_BY_STATUS: Record<number, string> = {
  400: "invalid_request",
  401: "not_authenticated",
  403: "forbidden",
  404: "not_found",
  405: "method_not_allowed",
  409: "conflict",
  410: "gone",
  413: "payload_too_large",
  415: "unsupported_media_type",
  416: "range_not_satisfiable",
  422: "invalid_request",
  429: "too_many_requests",
  500: "internal_error",
  502: "upstream_error",
  503: "unavailable",
};

export interface FalJobsErrorOptions {
  retryAfterMs?: number | undefined;
  requestId?: string | undefined;
  cause?: unknown;
}

/**
 * Every failure of a call: the service's error (`{status, error, message}`), or `status` 0 and
 * `error` "network_error" when no answer came at all.
 */
export class FalJobsError extends Error {
  override readonly name = "FalJobsError";
  /** The HTTP status; 0 when the service could not be reached. */
  readonly status: number;
  /** The service's error code: `not_found`, `too_many_requests`, `idempotency_in_progress`, … */
  readonly error: string;
  /** From `Retry-After` (429, 503, 409 while an idempotent create is in flight). */
  readonly retryAfterMs: number | undefined;
  /** The service's `X-Request-Id`: its log lines for this call carry the same id. */
  readonly requestId: string | undefined;

  constructor(status: number, error: string, message: string, options: FalJobsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.status = status;
    this.error = error;
    this.retryAfterMs = options.retryAfterMs;
    this.requestId = options.requestId;
  }

  static network(cause: unknown): FalJobsError {
    const reason = cause instanceof Error ? cause.message : String(cause);
    return new FalJobsError(0, "network_error", `the service could not be reached: ${reason}`, { cause });
  }

  static codeFor(status: number): string {
    return CODE_BY_STATUS[status] ?? "error";
  }
}

/** `waitForJob` past its `timeoutMs`; `job` is the last state seen (null when none came). */
export class FalJobsWaitTimeout extends Error {
  override readonly name = "FalJobsWaitTimeout";
  readonly job: Job | null;

  constructor(job: Job | null, timeoutMs: number) {
    super(`the job did not finish within ${timeoutMs} ms`);
    this.job = job;
  }
}
