// The browser side (subscribeJob, subscribeJobs: stream tokens, no API key) against the live
// service, with Node's own EventSource (undici's, as spec'd for browsers) in place of a browser's.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FalJobsError, isSettled, subscribeJob, subscribeJobs } from "@fal-jobs/client";

import {
  API_KEY, DIRECT_URL, SERVICE_URL, assertEveryStateFrom, assertIncreasing, clientFor, cutProxy, imageJob, newUser, proxyDown, proxyUp,
  recordedVersions, release, sleep, until,
} from "./helpers.js";

/** A subscription and everything it told: updates, states, errors, tokens asked for. */
function watch(subscribe, options) {
  const seen = { jobs: [], states: [], errors: [], errorsAt: [], tokens: 0, readies: [] };
  const getToken = options.getToken;
  const subscription = subscribe({
    baseUrl: SERVICE_URL,
    reconnectDelayMs: 20,
    maxReconnectDelayMs: 500,
    ...options,
    getToken: async () => {
      seen.tokens++;
      return getToken();
    },
    onUpdate: (job) => seen.jobs.push(job),
    onState: (state) => seen.states.push(state),
    onError: (error) => {
      seen.errors.push(error);
      seen.errorsAt.push(performance.now());
    },
    onReady: (info) => seen.readies.push(info),
  });
  return { subscription, seen };
}

const versionsOf = (jobs, requestId) => jobs.filter((job) => job.request_id === requestId).map((job) => job.version);
const lives = (seen) => seen.states.filter((state) => state === "live").length;

test("subscribeJob delivers each state once and closes when the job has settled", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const created = await client.createJob(imageJob());
  const { subscription, seen } = watch((o) => subscribeJob(created.request_id, o), {
    token: { token: created.stream_token, expires_at: created.stream_token_expires_at },
    getToken: () => client.createStreamToken({ scope: "job", request_id: created.request_id }),
  });
  await until(() => subscription.state === "closed", "the subscription closed");
  const last = seen.jobs.at(-1);
  assert.ok(isSettled(last), `closed on a settled job: ${last.status}, ${JSON.stringify(last.outputs)}`);
  assert.equal(last.outputs[0].status, "stored", "the stream goes on until the copy is stored");
  assert.deepEqual(seen.errors, []);
  assert.equal(subscription.error, null);
  assert.deepEqual(seen.states, ["live", "closed"]);
  assertEveryStateFrom(versionsOf(seen.jobs, created.request_id), await recordedVersions(client, created.request_id),
                       "the job's stream");
  assert.ok(subscription.lastEventId, "it kept the last event id");
});

test("a job stream cut mid-way resumes by its last id: every state once, none going back", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const created = await client.createJob(imageJob({ held: true }));
  const { subscription, seen } = watch((o) => subscribeJob(created.request_id, o), {
    getToken: () => client.createStreamToken({ scope: "job", request_id: created.request_id }),
  });
  await until(() => seen.jobs.length > 0 && subscription.state === "live", "the first state arrived");
  assert.ok((await cutProxy()).cut >= 1, "the proxy held the stream");
  await until(() => lives(seen) >= 2, "live again after the cut");
  assert.deepEqual(seen.states.slice(0, 3), ["live", "reconnecting", "live"]);
  await release(created.request_id);
  await release(created.request_id);
  await until(() => subscription.state === "closed", "the job settled");
  assert.deepEqual(seen.errors, []);
  assertEveryStateFrom(versionsOf(seen.jobs, created.request_id), await recordedVersions(client, created.request_id),
                       "the job's stream");
});

test("a user stream down while jobs change replays every change once when it comes back", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const direct = clientFor(user.api_key, { baseUrl: DIRECT_URL });
  const { subscription, seen } = watch(subscribeJobs, { getToken: () => client.createStreamToken({ scope: "user" }) });
  await until(() => seen.readies.length === 1, "the stream is ready");
  assert.deepEqual(seen.readies, [{ resumed: false }]);
  const created = await direct.createJob(imageJob({ held: true }));
  await until(() => seen.jobs.length > 0, "the new job arrived");

  await proxyDown();
  await release(created.request_id);
  await release(created.request_id);
  await direct.waitForJob(created.request_id, { timeoutMs: 60_000 });
  await until(() => seen.errors.some((error) => error.status === 0), "a reconnect failed while down");
  await proxyUp();
  await until(() => seen.jobs.some((job) => isSettled(job)), "the replay reached the job's end");

  // The stream was open before the job was made: every version it recorded, once, in order.
  assert.deepEqual(versionsOf(seen.jobs, created.request_id), await recordedVersions(client, created.request_id));
  assert.deepEqual(seen.readies.at(-1), { resumed: true });
  assert.equal(subscription.state, "live", "a user stream stays open");
  subscription.close();
  assert.equal(subscription.state, "closed");
  assert.equal(seen.states.at(-1), "closed");
});

test("a token expiring mid-stream is replaced before a reconnect needs it, and nothing is lost", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const created = await client.createJob(imageJob({ held: true }));
  const tokens = [];
  const { subscription, seen } = watch((o) => subscribeJob(created.request_id, o), {
    getToken: async () => {
      const token = await client.createStreamToken({ scope: "job", request_id: created.request_id });
      tokens.push(token);
      return token;
    },
  });
  await until(() => seen.jobs.length > 0 && subscription.state === "live", "the first state arrived");
  await until(() => Date.now() > tokens[0].expires_at * 1000 + 50, "the first token expired");
  await cutProxy();
  await until(() => lives(seen) >= 2, "live again with a new token");
  assert.equal(seen.tokens, 2);
  assert.deepEqual(seen.errors, [], "no connection was refused: the token was replaced before it was used");
  await release(created.request_id);
  await release(created.request_id);
  await until(() => subscription.state === "closed", "the job settled");
  assertEveryStateFrom(versionsOf(seen.jobs, created.request_id), await recordedVersions(client, created.request_id),
                       "the job's stream");
});

test("a token the service refuses (401) is replaced at once, and nothing is lost", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const created = await client.createJob(imageJob({ held: true }));
  // A bare token: the subscription cannot know when it expires, only that it was refused.
  const { subscription, seen } = watch((o) => subscribeJob(created.request_id, o), {
    getToken: async () => (await client.createStreamToken({ scope: "job", request_id: created.request_id })).token,
  });
  await until(() => seen.jobs.length > 0 && subscription.state === "live", "the first state arrived");
  const expired = Date.now() + Number(process.env.FAL_JOBS_TOKEN_TTL_S) * 1000 + 50;
  await until(() => Date.now() > expired, "the first token expired");
  await cutProxy();
  await until(() => lives(seen) >= 2, "live again with a new token");
  assert.equal(seen.tokens, 2);
  assert.equal(seen.errors.length, 1);
  assert.ok(seen.errors[0] instanceof FalJobsError);
  assert.deepEqual([seen.errors[0].status, seen.errors[0].error], [401, "not_authenticated"]);
  assert.match(seen.errors[0].message, /expired/);
  assert.equal(subscription.error, null, "the error clears once the stream is live again");
  await release(created.request_id);
  await release(created.request_id);
  await until(() => subscription.state === "closed", "the job settled");
  assertEveryStateFrom(versionsOf(seen.jobs, created.request_id), await recordedVersions(client, created.request_id),
                       "the job's stream");
});

test("a subscription resumed after the job's last event closes on the 204, with no update", async () => {
  const client = clientFor(API_KEY);
  const created = await client.createJob(imageJob());
  const first = watch((o) => subscribeJob(created.request_id, o), {
    getToken: () => client.createStreamToken({ scope: "job", request_id: created.request_id }),
  });
  await until(() => first.subscription.state === "closed", "the first subscription saw the end");
  const again = watch((o) => subscribeJob(created.request_id, o), {
    lastEventId: first.subscription.lastEventId,
    getToken: () => client.createStreamToken({ scope: "job", request_id: created.request_id }),
  });
  await until(() => again.subscription.state === "closed", "the resumed subscription closed");
  assert.deepEqual(again.seen.jobs, []);
  assert.deepEqual(again.seen.errors, []);
  assert.equal(again.seen.tokens, 1);
});

test("a stream refused with 429 waits out its Retry-After, then goes live", async () => {
  const user = await newUser({ max_streams: 1 });
  const client = clientFor(user.api_key, { baseUrl: DIRECT_URL });
  const created = await client.createJob(imageJob({ held: true }));
  const holder = new AbortController();
  const held = await fetch(`${DIRECT_URL}/api/events`, {
    headers: { Authorization: `Bearer ${user.api_key}` }, signal: holder.signal,
  });
  assert.equal(held.status, 200);
  const opened = [];
  class RecordingEventSource extends EventSource {
    constructor(url) {
      super(url);
      opened.push(performance.now());
    }
  }
  const { subscription, seen } = watch((o) => subscribeJob(created.request_id, o), {
    baseUrl: DIRECT_URL,
    EventSource: RecordingEventSource,
    getToken: () => client.createStreamToken({ scope: "job", request_id: created.request_id }),
  });
  await until(() => seen.errors.length > 0, "the stream was refused");
  holder.abort();
  await until(() => subscription.state === "live", "live once the Retry-After passed");
  const [refusal] = seen.errors;
  assert.deepEqual([refusal.status, refusal.error, refusal.retryAfterMs], [429, "too_many_requests", 5000]);
  assert.equal(opened.length, 2);
  // Timers may fire a millisecond early; the reconnect must not come seconds early.
  const waited = opened[1] - seen.errorsAt[0];
  assert.ok(waited >= 5000 - 5, `reconnected ${waited} ms after the 429`);
  assert.deepEqual(seen.states, ["live"], "connecting until then");
  subscription.close();
  await client.cancelJob(created.request_id);
});

test("a token that never opens the stream: a few fresh ones are tried, then it closes with the 401", async () => {
  const owner = clientFor(API_KEY);
  const stranger = clientFor((await newUser()).api_key);
  const created = await owner.createJob(imageJob());
  const mine = await stranger.createStreamToken({ scope: "user" });
  const { subscription, seen } = watch((o) => subscribeJob(created.request_id, o), { getToken: () => mine });
  await until(() => subscription.state === "closed", "the subscription gave up");
  assert.ok(subscription.error instanceof FalJobsError);
  assert.equal(subscription.error.status, 401, "a user token does not open a job's stream");
  assert.ok(seen.tokens <= 3, `asked for ${seen.tokens} tokens before giving up`);
  assert.deepEqual(seen.jobs, []);
});

test("subscribeJobs keeps the highest version per job; close() ends it", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const { subscription, seen } = watch(subscribeJobs, {
    getToken: () => client.createStreamToken({ scope: "user" }),
    status: ["completed"],
  });
  await until(() => seen.readies.length === 1, "the stream is ready");
  const ids = [];
  for (let i = 0; i < 2; i++) ids.push((await client.createJob(imageJob())).request_id);
  await until(() => ids.every((id) => seen.jobs.some((job) => job.request_id === id && isSettled(job))),
              "both jobs completed, their outputs stored");
  for (const id of ids) assertIncreasing(versionsOf(seen.jobs, id), id);
  assert.ok(seen.jobs.every((job) => job.status === "completed"), "only the status asked for");
  subscription.close();
  const count = seen.jobs.length;
  await client.waitForJob((await client.createJob(imageJob())).request_id, { timeoutMs: 60_000 });
  await sleep(200);
  assert.equal(seen.jobs.length, count, "nothing after close()");
  assert.deepEqual(seen.states, ["live", "closed"]);
});
