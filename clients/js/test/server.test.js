// The server side (FalJobsClient, with an API key) against the live service.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FalJobsClient, FalJobsError, FalJobsWaitTimeout, isTerminal } from "@fal-jobs/client";

import {
  API_KEY, DIRECT_URL, SERVICE_URL, assertIncreasing, clientFor, imageJob, newUser, proxyDown, proxyUp, release,
  recordedVersions, until,
} from "./helpers.js";

test("createJob, then waitForJob answers the completed job", async () => {
  const client = clientFor(API_KEY);
  const created = await client.createJob(imageJob());
  assert.equal(created.status, "pending");
  assert.ok(created.stream_token, "a create answers a stream token for the job");
  const seen = [];
  const done = await client.waitForJob(created.request_id, { timeoutMs: 60_000, onUpdate: (job) => seen.push(job) });
  assert.equal(done.request_id, created.request_id);
  assert.equal(done.status, "completed");
  assert.ok(Array.isArray(done.result.images) && done.result.images.length > 0, JSON.stringify(done.result));
  assertIncreasing(seen.map((job) => job.version), "onUpdate");
  assert.equal((await client.getJob(created.request_id)).status, "completed");
});

test("waitForJob resumes a stream the network cut, and loses nothing: every state once, none going back", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const direct = clientFor(user.api_key, { baseUrl: DIRECT_URL });
  const created = await client.createJob(imageJob({ held: true }));
  const seen = [];
  const retries = [];
  const watcher = new FalJobsClient({ baseUrl: SERVICE_URL, apiKey: user.api_key, retryDelayMs: 20,
                                      onRetry: (info) => retries.push(info) });
  const waiting = watcher.waitForJob(created.request_id, { timeoutMs: 60_000, onUpdate: (job) => seen.push(job) });
  await until(() => seen.length > 0, "the first state arrived");

  await proxyDown(); // the stream is cut, and no new connection gets through
  await release(created.request_id); // while it is down the job starts running
  await until(async () => (await direct.getJob(created.request_id)).status === "in_progress", "the job runs");
  await until(() => retries.some((retry) => retry.status === 0), "a reconnect was refused while down");
  await proxyUp();
  await until(() => seen.some((job) => job.status === "in_progress"), "the resumed stream brought in_progress");
  await release(created.request_id);

  const done = await waiting;
  assert.equal(done.status, "completed");
  const versions = seen.map((job) => job.version);
  assertIncreasing(versions, "a resumed wait");
  assert.deepEqual(seen.map((job) => job.status).filter((s, i, all) => s !== all[i - 1]),
                   ["pending", "in_progress", "completed"]);
  // A job stream resumed sends the latest state, so a state the job passed while the stream was
  // down may be skipped, never repeated; what it sent is what the service recorded.
  const recorded = await recordedVersions(client, created.request_id);
  for (const version of versions) assert.ok(recorded.includes(version), `version ${version} in ${recorded}`);
});

test("a stream refused with 429 is retried after its Retry-After, not before", async () => {
  const user = await newUser({ max_streams: 1 });
  const client = clientFor(user.api_key, { baseUrl: DIRECT_URL });
  const created = await client.createJob(imageJob({ held: true }));
  const holder = new AbortController(); // the user's one stream
  const held = await fetch(`${DIRECT_URL}/api/events`, {
    headers: { Authorization: `Bearer ${user.api_key}` }, signal: holder.signal,
  });
  assert.equal(held.status, 200);

  const attempts = [];
  const refusals = [];
  const recording = (input, init) => {
    if (String(input).endsWith("/events")) attempts.push(performance.now());
    return fetch(input, init);
  };
  const watcher = new FalJobsClient({
    baseUrl: DIRECT_URL, apiKey: user.api_key, fetch: recording, retryDelayMs: 20,
    onRetry: (info) => refusals.push({ ...info, at: performance.now() }),
  });
  const waiting = watcher.waitForJob(created.request_id, { timeoutMs: 60_000 });
  await until(() => refusals.length > 0, "the stream was refused");
  holder.abort(); // the place comes back long before the Retry-After has passed
  await release(created.request_id);
  await release(created.request_id);
  const done = await waiting;

  assert.equal(done.status, "completed");
  const [refusal] = refusals;
  assert.equal(refusal.status, 429);
  assert.equal(refusal.error, "too_many_requests");
  assert.equal(refusal.delayMs, 5000, "Retry-After: 5");
  assert.equal(refusals.length, 1);
  assert.equal(attempts.length, 2);
  // Timers may fire a millisecond early; the retry must not come seconds early.
  assert.ok(attempts[1] - refusal.at >= refusal.delayMs - 5, `retried ${attempts[1] - refusal.at} ms after a 429`);
});

test("a create over the open-jobs limit fails at once with 429 and its Retry-After", async () => {
  const user = await newUser({ max_open_jobs: 1 });
  const retries = [];
  const client = clientFor(user.api_key, { onRetry: (info) => retries.push(info) });
  const first = await client.createJob(imageJob({ held: true }));
  await assert.rejects(client.createJob(imageJob({ held: true })), (error) => {
    assert.ok(error instanceof FalJobsError);
    assert.equal(error.status, 429);
    assert.equal(error.error, "too_many_requests");
    assert.match(error.message, /MAX_OPEN_JOBS_PER_USER/);
    assert.equal(error.retryAfterMs, 10_000);
    return true;
  });
  assert.deepEqual(retries, [], "a limit is the caller's to wait out, not a retry");
  assert.equal((await client.cancelJob(first.request_id)).status, "cancelled");
});

test("an AbortSignal ends a wait with its reason; timeoutMs with FalJobsWaitTimeout and the last state", async () => {
  const client = clientFor(API_KEY);
  const created = await client.createJob(imageJob({ held: true }));
  const controller = new AbortController();
  const seen = [];
  const waiting = client.waitForJob(created.request_id, { signal: controller.signal, onUpdate: (job) => seen.push(job) });
  await until(() => seen.length > 0, "the wait is streaming");
  const reason = new Error("the caller went away");
  controller.abort(reason);
  await assert.rejects(waiting, (error) => error === reason);

  const aborted = AbortSignal.abort();
  await assert.rejects(client.waitForJob(created.request_id, { signal: aborted }), { name: "AbortError" });

  await assert.rejects(client.waitForJob(created.request_id, { timeoutMs: 300 }), (error) => {
    assert.ok(error instanceof FalJobsWaitTimeout);
    assert.equal(error.job?.request_id, created.request_id);
    assert.equal(error.job?.status, "pending");
    return true;
  });
  assert.equal((await client.cancelJob(created.request_id)).status, "cancelled");
});

test("errors are FalJobsError with the service's status, error and message", async () => {
  const client = clientFor(API_KEY);
  await assert.rejects(client.getJob("no-such-job"), (error) => {
    assert.ok(error instanceof FalJobsError);
    assert.deepEqual([error.status, error.error], [404, "not_found"]);
    assert.match(error.message, /no-such-job/);
    assert.ok(error.requestId, "the service's X-Request-Id");
    return true;
  });
  await assert.rejects(clientFor("not-a-key").getJob("x"), { status: 401, error: "not_authenticated" });
  await assert.rejects(client.createJob({ type: "image", model_id: "no/such-model", input: { prompt: "x" } }),
                       (error) => error instanceof FalJobsError && error.status === 400 && error.error === "invalid_request" &&
                         /model/.test(error.message));

  const done = await client.waitForJob((await client.createJob(imageJob())).request_id, { timeoutMs: 60_000 });
  await assert.rejects(client.cancelJob(done.request_id), { status: 409, error: "conflict" });

  const retries = [];
  const nowhere = new FalJobsClient({ baseUrl: "http://127.0.0.1:9", apiKey: API_KEY, retries: 2, retryDelayMs: 1,
                                      onRetry: (info) => retries.push(info) });
  await assert.rejects(nowhere.getJob("x"), (error) => error instanceof FalJobsError && error.status === 0 &&
    error.error === "network_error" && error.cause !== undefined);
  assert.deepEqual(retries.map((retry) => [retry.attempt, retry.status]), [[1, 0], [2, 0]]);
});

test("createJob retries a refused connection, and one Idempotency-Key makes one job", async () => {
  const user = await newUser();
  const retries = [];
  const client = clientFor(user.api_key, { retries: 8, onRetry: (info) => retries.push(info) });
  await proxyDown();
  let creating;
  try {
    creating = client.createJob(imageJob(), { idempotencyKey: "js-client-one-job" });
    await until(() => retries.length > 0, "a create was refused");
  } finally {
    await proxyUp();
  }
  const created = await creating;
  assert.equal(retries[0].status, 0);
  const again = await client.createJob(imageJob(), { idempotencyKey: "js-client-one-job" });
  assert.equal(again.request_id, created.request_id, "the same key and body answer the same job");
  const jobs = [];
  for await (const job of client.listJobs()) jobs.push(job.request_id);
  assert.deepEqual(jobs, [created.request_id]);
});

test("listJobs walks every page, newest first", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push((await client.createJob(imageJob())).request_id);
  const listed = [];
  for await (const job of client.listJobs({ limit: 2 })) listed.push(job.request_id);
  assert.deepEqual(listed, [...ids].reverse());
  const pages = [];
  for await (const page of client.listJobs({ limit: 2 }).pages()) pages.push(page.jobs.length);
  assert.deepEqual(pages, [2, 1]);
  for (const id of ids) await client.waitForJob(id, { timeoutMs: 60_000 });
  const completed = [];
  for await (const job of client.listJobs({ status: "completed", type: "image" })) completed.push(job.status);
  assert.deepEqual(completed, ["completed", "completed", "completed"]);
});

test("cancelJob, deleteJob, createStreamToken and outputLink", async () => {
  const client = clientFor(API_KEY);
  const held = await client.createJob(imageJob({ held: true }));
  const cancelled = await client.cancelJob(held.request_id);
  assert.equal(cancelled.status, "cancelled");
  assert.ok(isTerminal(cancelled));
  assert.equal((await client.deleteJob(held.request_id)).status, "deleted");

  const done = await client.waitForJob((await client.createJob(imageJob())).request_id, { timeoutMs: 60_000 });
  const link = await client.outputLink(done.request_id, 0);
  assert.ok(link.url.startsWith(`${SERVICE_URL}/api/jobs/${done.request_id}/outputs/0?token=`), link.url);
  assert.ok(link.expires_at * 1000 > Date.now());
  const opened = await fetch(link.url, { redirect: "manual" });
  assert.ok([200, 307].includes(opened.status), `a signed link opens the output: ${opened.status}`);
  await opened.body?.cancel();

  const token = await client.createStreamToken({ scope: "job", request_id: done.request_id });
  assert.ok(token.url.startsWith(`${SERVICE_URL}/api/jobs/${done.request_id}/events?token=`), token.url);
  const user = await client.createStreamToken({ scope: "user" });
  assert.ok(user.url.startsWith(`${SERVICE_URL}/api/events?token=`), user.url);
  await assert.rejects(client.createStreamToken({ scope: "job", request_id: "no-such-job" }), { status: 404 });
});
