// POST /api/generate {prompt, type}: creates the job on the service with this server's API key and
// the end user's tag, and answers what the browser needs to follow it live:
// {request_id, stream_token, stream_token_expires_at}.

import type { JobType } from "@fal-jobs/client";

import { problem, serviceProblem } from "@/lib/answers";
import { signedInUser } from "@/lib/end-user";
import { falJobs, streamTokenFor } from "@/lib/fal-jobs";

const MODELS: Record<JobType, string> = {
  image: "fal-ai/flux/schnell",
  video: "fal-ai/minimax/video-01",
};
const MAX_PROMPT = 1000;

export interface GenerateAnswer {
  request_id: string;
  stream_token: string;
  stream_token_expires_at: number;
}

export async function POST(request: Request): Promise<Response> {
  const body = (await request.json().catch(() => null)) as { prompt?: unknown; type?: unknown } | null;
  const prompt = typeof body?.prompt === "string" ? body.prompt.trim() : "";
  if (!prompt || prompt.length > MAX_PROMPT) {
    return problem(400, "invalid_request", `prompt: write what to make, 1 to ${MAX_PROMPT} characters`);
  }
  const type = body?.type ?? "image";
  if (type !== "image" && type !== "video") return problem(400, "invalid_request", "type: image or video");

  const user = await signedInUser();
  try {
    const job = await falJobs().createJob({ type, model_id: MODELS[type], input: { prompt }, tags: [user.tag] });
    const token = await streamTokenFor(user);
    const answer: GenerateAnswer = {
      request_id: job.request_id, stream_token: token.token, stream_token_expires_at: token.expires_at,
    };
    return Response.json(answer, { status: 201 });
  } catch (failure) {
    return serviceProblem(failure);
  }
}
