import { publicServiceUrl } from "@/lib/fal-jobs";

import { Generator } from "./generator";

// The service's URL is read when the page is asked for, not baked in at build time.
export const dynamic = "force-dynamic";

export default function Home() {
  return (
    <main>
      <h1>Generate</h1>
      <p className="lede">
        Your server creates the job on fal-jobs; this page follows it live, from the queue to the picture.
      </p>
      <Generator serviceUrl={publicServiceUrl()} />
    </main>
  );
}
