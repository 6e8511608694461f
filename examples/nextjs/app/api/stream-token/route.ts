// GET /api/stream-token?job=<request_id>: a fresh stream token for the browser (useFalJob's getToken
// asks before the one it holds expires, and when the service refused it). Only for a job of this
// user: every job of one API key is this server's, so the user's tag decides whose it is.

import type { NextRequest } from "next/server";

import { problem, serviceProblem } from "@/lib/answers";
import { currentUser } from "@/lib/end-user";
import { falJobs, streamScope } from "@/lib/fal-jobs";
import type { BrowserToken } from "@/lib/fal-jobs";

export async function GET(request: NextRequest): Promise<Response> {
  const user = await currentUser();
  if (!user) return problem(401, "not_authenticated", "no user here yet: generate something first");
  const requestId = request.nextUrl.searchParams.get("job");
  if (!requestId) return problem(400, "invalid_request", "job: the request_id to follow");
  try {
    const job = await falJobs().getJob(requestId);
    if (!job.tags?.includes(user.tag)) return problem(404, "not_found", `job ${requestId}: no such job of yours`);
    const { token, expires_at } = await falJobs().createStreamToken(streamScope(user, requestId));
    const answer: BrowserToken = { token, expires_at };
    return Response.json(answer, { headers: { "Cache-Control": "no-store" } });
  } catch (failure) {
    return serviceProblem(failure);
  }
}
