// The server side of the app: the one place that holds the fal-jobs API key. Only route handlers
// and server components import this file (nothing here reaches the browser's bundle).

import { FalJobsClient } from "@fal-jobs/client";
import type { Job } from "@fal-jobs/client";

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

/** What the browser gets to follow its jobs. */
export interface BrowserToken {
  token: string;
  /** Unix seconds: the browser asks /api/stream-token for a new one before then. */
  expires_at: number;
}

/**
 * A stream token for `user`'s browser: scoped to the user's tag, it opens the streams of that
 * user's jobs and of nothing else (not the other users' jobs under the same API key), so one token
 * serves all of them and the browser can ask for it without saying which job.
 */
export async function streamTokenFor(user: EndUser): Promise<BrowserToken> {
  const { token, expires_at } = await falJobs().createStreamToken({ scope: "tag", tag: user.tag });
  return { token, expires_at };
}

/** The user's latest jobs (newest first), for the page to start with. */
export async function recentJobs(user: EndUser, limit = 6): Promise<Job[]> {
  const page = await falJobs().getJobPage({ tag: user.tag, limit });
  return page.jobs;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: see examples/nextjs/README.md`);
  return value;
}
