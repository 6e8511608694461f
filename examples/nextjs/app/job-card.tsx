"use client";

import { isSettled } from "@fal-jobs/client";
import type { Job } from "@fal-jobs/client";
import { useFalJob } from "@fal-jobs/client/react";

export interface StreamToken {
  token: string;
  expires_at: number;
}

const LABELS: Record<Job["status"], string> = {
  pending: "Queued",
  in_progress: "Running",
  completed: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
  deleted: "Deleted",
};

/** fal's media URL in a finished job's result: flux's `images[0]`, a video model's `video`. */
function media(job: Job): { kind: "image" | "video"; url: string } | null {
  const result = job.result as { images?: { url?: unknown }[]; video?: { url?: unknown } } | null;
  const video = result?.video?.url;
  if (typeof video === "string") return { kind: "video", url: video };
  const image = result?.images?.[0]?.url;
  return typeof image === "string" ? { kind: "image", url: image } : null;
}

/** A new stream token from this app's server (which holds the API key; the browser never does). */
async function freshToken(): Promise<StreamToken> {
  const answer = await fetch("/api/stream-token", { cache: "no-store" });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.message ?? `HTTP ${answer.status}`);
  return body;
}

/** One job, live: its state as the service streams it, then its picture or video. */
export function JobCard({ requestId, serviceUrl, token, initial }: {
  requestId: string;
  serviceUrl: string;
  token?: StreamToken;
  initial?: Job;
}) {
  // A job that was already done when the page was made needs no stream.
  const doneBefore = initial !== undefined && isSettled(initial);
  const live = useFalJob(doneBefore ? null : requestId, {
    baseUrl: serviceUrl,
    ...(token ? { token } : {}), // the one /api/generate answered: the first connection asks nobody
    getToken: freshToken,
  });
  const job = live.job ?? initial ?? null;
  const connection = doneBefore ? "closed" : live.connection;
  const status = job?.status;
  const done = job ? media(job) : null;
  const prompt = typeof job?.input.prompt === "string" ? job.input.prompt : "";
  const lastLog = job?.logs?.at(-1)?.message;

  return (
    <article className="job" data-testid="job" data-request-id={requestId} data-status={status ?? "unknown"}
             data-connection={connection} aria-busy={!done && connection !== "closed"}>
      <header>
        <strong data-testid="job-status">{status ? LABELS[status] : "Connecting…"}</strong>
        {status === "pending" && job?.queue_position != null && <span> · position {job.queue_position + 1} in the queue</span>}
        {connection === "reconnecting" && <span> · reconnecting…</span>}
      </header>
      {done?.kind === "image" && <img data-testid="job-image" src={done.url} alt={prompt} />}
      {done?.kind === "video" && <video data-testid="job-video" src={done.url} controls muted loop playsInline />}
      {!done && status !== "failed" && status !== "cancelled" && <progress aria-label={status ?? "connecting"} />}
      {lastLog && !done && <p className="log">{lastLog}</p>}
      {job?.error && <p role="alert">{job.error}</p>}
      {live.error && !job && <p role="alert">{live.error.message}</p>}
      <footer><code>{requestId}</code>{prompt && <> · {prompt}</>}</footer>
    </article>
  );
}
