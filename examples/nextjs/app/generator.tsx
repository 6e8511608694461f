"use client";

import type { Job } from "@fal-jobs/client";
import { useState } from "react";
import type { FormEvent } from "react";

import type { GenerateAnswer } from "./api/generate/route";
import { JobCard } from "./job-card";
import type { StreamToken } from "./job-card";

interface Shown {
  requestId: string;
  /** The token /api/generate answered with, for a job made here. */
  token?: StreamToken;
  /** The state the server listed, for a job made before. */
  initial?: Job;
}

/** The form, and the user's jobs (newest first), each followed live until it is done. */
export function Generator({ serviceUrl, initialJobs }: { serviceUrl: string; initialJobs: Job[] }) {
  const [jobs, setJobs] = useState<Shown[]>(() => initialJobs.map((job) => ({ requestId: job.request_id, initial: job })));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function generate(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    setBusy(true);
    setError(null);
    try {
      const answer = await fetch("/api/generate", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: form.get("prompt"), type: form.get("type") }),
      });
      const body = (await answer.json()) as GenerateAnswer & { message?: string };
      if (!answer.ok) throw new Error(body.message ?? `HTTP ${answer.status}`);
      const token = { token: body.stream_token, expires_at: body.stream_token_expires_at };
      setJobs((current) => [{ requestId: body.request_id, token }, ...current]);
    } catch (failure) {
      setError(failure instanceof Error ? failure.message : String(failure));
    } finally {
      setBusy(false);
    }
  }

  return (
    <>
      <form onSubmit={generate}>
        <label>
          Prompt
          <textarea name="prompt" required maxLength={1000} rows={3} defaultValue="a red fox in the snow" />
        </label>
        <fieldset>
          <legend>Make</legend>
          <label><input type="radio" name="type" value="image" defaultChecked /> an image</label>
          <label><input type="radio" name="type" value="video" /> a video</label>
        </fieldset>
        <button type="submit" disabled={busy}>{busy ? "Starting…" : "Generate"}</button>
        {error && <p role="alert">{error}</p>}
      </form>
      <section aria-label="Your jobs" className="jobs">
        {jobs.map((job) => <JobCard key={job.requestId} serviceUrl={serviceUrl} {...job} />)}
      </section>
    </>
  );
}
