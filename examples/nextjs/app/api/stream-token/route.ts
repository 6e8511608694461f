// GET /api/stream-token: a fresh stream token for this browser's user (useFalJob's getToken asks
// before the one it holds expires, and when the service refused it). Scoped to the user's tag, it
// opens only that user's jobs: nothing to check here beyond who is asking.

import { problem, serviceProblem } from "@/lib/answers";
import { currentUser } from "@/lib/end-user";
import { streamTokenFor } from "@/lib/fal-jobs";

export async function GET(): Promise<Response> {
  const user = await currentUser();
  if (!user) return problem(401, "not_authenticated", "no user here yet: generate something first");
  try {
    return Response.json(await streamTokenFor(user), { headers: { "Cache-Control": "no-store" } });
  } catch (failure) {
    return serviceProblem(failure);
  }
}
