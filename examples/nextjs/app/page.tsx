import type { Job } from "@fal-jobs/client";

import { currentUser } from "@/lib/end-user";
import { publicServiceUrl, recentJobs } from "@/lib/fal-jobs";

import { Generator } from "./generator";

// Per request: the user's own jobs, and the service's URL as set when the page is asked for (not at build).
export const dynamic = "force-dynamic";

export default async function Home() {
  const user = await currentUser();
  let jobs: Job[] = [];
  let unavailable: string | null = null;
  if (user) {
    try {
      jobs = await recentJobs(user);
    } catch (failure) {
      unavailable = failure instanceof Error ? failure.message : String(failure);
    }
  }
  return (
    <main>
      <h1>Generate</h1>
      <p className="lede">
        Your server creates the job on fal-jobs; this page follows it live, from the queue to the picture.
      </p>
      {unavailable && <p role="alert">Your earlier jobs could not be listed: {unavailable}</p>}
      <Generator serviceUrl={publicServiceUrl()} initialJobs={jobs} />
    </main>
  );
}
