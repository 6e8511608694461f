// The route handlers' answers to the browser: `{error, message}` on failure, as the service's own.

import { FalJobsError } from "@fal-jobs/client";

export function problem(status: number, error: string, message: string, headers?: HeadersInit): Response {
  return Response.json({ error, message }, { status, headers });
}

/** A failed call to the service, told to the browser: its 4xx as they are (the message names the
 * problem, never a secret), a 429's Retry-After kept; anything else as 502. */
export function serviceProblem(failure: unknown): Response {
  if (!(failure instanceof FalJobsError)) throw failure;
  if (failure.status === 429) {
    const wait = failure.retryAfterMs === undefined ? undefined : { "Retry-After": String(Math.ceil(failure.retryAfterMs / 1000)) };
    return problem(429, failure.error, failure.message, wait);
  }
  if (failure.status >= 400 && failure.status < 500) return problem(failure.status, failure.error, failure.message);
  return problem(502, "service_unavailable", `the job service could not answer (${failure.status || "no connection"}): ${failure.message}`);
}
