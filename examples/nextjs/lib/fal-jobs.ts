// The server side of the app: the one place that holds the fal-jobs API key. Only route handlers
// and server components import this file (nothing here reaches the browser's bundle).

import { FalJobsClient } from "@fal-jobs/client";
import type { CreatedJob, StreamTokenScope } from "@fal-jobs/client";

import type { EndUser } from "./end-user";

let client: FalJobsClient | undefined;

/** The service, as this server reaches it: FAL_JOBS_URL, with FAL_JOBS_API_KEY. */
export function falJobs(): FalJobsClient {
  client ??= new FalJobsClient({ baseUrl: required("FAL_JOBS_URL"), apiKey: required("FAL_JOBS_API_KEY") });
  return client;
}

/** The service, as browsers reach it (EventSource): FAL_JOBS_PUBLIC_URL, or FAL_JOBS_URL when both are one. */
export function publicServiceUrl(): string {
  return (process.env.FAL_JOBS_PUBLIC_URL || required("FAL_JOBS_URL")).replace(/\/+$/, "");
}

/**
 * What a browser's stream token opens: here one job's stream. On a service with tag-scoped tokens,
 * `{ scope: "tag", tag: user.tag }` opens the streams of every job of this user (and nothing else),
 * so one token serves all of them: change this line, nothing else.
 */
export function streamScope(user: EndUser, requestId: string): StreamTokenScope {
  return { scope: "job", request_id: requestId };
}

export interface BrowserToken {
  token: string;
  /** Unix seconds: the browser asks /api/stream-token for a new one before then. */
  expires_at: number;
}

/** A stream token for `user`'s browser to follow the job `created` (the create's own when it fits). */
export async function streamTokenFor(user: EndUser, created: CreatedJob): Promise<BrowserToken> {
  const scope = streamScope(user, created.request_id);
  if (scope.scope === "job") return { token: created.stream_token, expires_at: created.stream_token_expires_at };
  const { token, expires_at } = await falJobs().createStreamToken(scope);
  return { token, expires_at };
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: see examples/nextjs/README.md`);
  return value;
}
