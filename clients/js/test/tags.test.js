// Tags: an app with one API key tags each job with its end user, then lists, streams and mints
// stream tokens by tag. A tag-scoped token opens that tag's streams and nothing else.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FalJobsError, isSettled, subscribeJob, subscribeJobs } from "@fal-jobs/client";

import { DIRECT_URL, assertJobFields, clientFor, imageJob, newUser, until } from "./helpers.js";

/** A subscription and what it told: updates, states, errors, tokens asked for. */
function watch(subscribe, getToken, options = {}) {
  const seen = { jobs: [], states: [], errors: [], tokens: 0, ready: false };
  const subscription = subscribe({
    baseUrl: DIRECT_URL, reconnectDelayMs: 20, maxReconnectDelayMs: 200, ...options,
    getToken: () => {
      seen.tokens++;
      return getToken();
    },
    onUpdate: (job) => seen.jobs.push(job),
    onState: (state) => seen.states.push(state),
    onError: (error) => seen.errors.push(error),
    onReady: () => {
      seen.ready = true;
    },
  });
  return { subscription, seen };
}

test("tags and metadata come back on every representation; listJobs({tag}) pages only that tag's jobs", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const a1 = await client.createJob({ ...imageJob(), tags: ["user:a", "project:9", "user:a"], metadata: { n: 1 } });
  const untagged = await client.createJob(imageJob());
  const b1 = await client.createJob({ ...imageJob(), tags: ["user:b"] });
  const a2 = await client.createJob({ ...imageJob(), tags: ["user:a"], metadata: { n: 2, deep: { ok: true } } });

  assert.deepEqual([a1.tags, a1.metadata], [["user:a", "project:9"], { n: 1 }], "duplicates dropped, order kept");
  assert.deepEqual([untagged.tags, untagged.metadata], [[], {}], "none: [] and {}");
  assertJobFields(a1, ["links", "stream_token", "stream_token_expires_at"], "a create's answer");

  const listed = [];
  const pages = [];
  for await (const page of client.listJobs({ tag: "user:a", limit: 1 }).pages()) {
    pages.push(page.jobs.length);
    for (const job of page.jobs) {
      assertJobFields(job, ["links"], "a listed job");
      listed.push([job.request_id, job.metadata.n]);
    }
  }
  assert.deepEqual(listed, [[a2.request_id, 2], [a1.request_id, 1]], "newest first, only user:a");
  assert.equal(pages.filter((n) => n > 0).length, 2, "one job a page");
  const bs = [];
  for await (const job of client.listJobs({ tag: "user:b" })) bs.push(job.request_id);
  assert.deepEqual(bs, [b1.request_id]);
  for (const job of [a1, untagged, b1, a2]) await client.waitForJob(job.request_id, { timeoutMs: 60_000 });

  await assert.rejects(client.createJob({ ...imageJob(), tags: ["has space"] }),
                       (error) => error instanceof FalJobsError && error.status === 400 && /tags\[0\]/.test(error.message));
});

test("a tag token: subscribeJobs({tag}) sees only that tag's jobs", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const tagToken = () => client.createStreamToken({ scope: "tag", tag: "user:a" });
  const { subscription, seen } = watch(subscribeJobs, tagToken, { tag: "user:a" });
  try {
    await until(() => seen.ready, "the tag's stream is subscribed");
    const a1 = await client.createJob({ ...imageJob(), tags: ["user:a"] });
    const b1 = await client.createJob({ ...imageJob(), tags: ["user:b"] });
    const untagged = await client.createJob(imageJob());
    for (const job of [a1, b1, untagged]) await client.waitForJob(job.request_id, { timeoutMs: 60_000 });
    // The stream is in event order: once a job created after the others has settled there, every
    // event of theirs was offered before it.
    const a2 = await client.createJob({ ...imageJob(), tags: ["user:a", "other"] });
    await until(() => seen.jobs.some((job) => job.request_id === a2.request_id && isSettled(job)), "a2 settled on the stream");

    const ids = new Set(seen.jobs.map((job) => job.request_id));
    assert.deepEqual([...ids].sort(), [a1.request_id, a2.request_id].sort(), "only user:a's jobs");
    assert.ok(seen.jobs.some((job) => job.request_id === a1.request_id && isSettled(job)));
    assert.ok(seen.jobs.every((job) => job.tags.includes("user:a")));
    assert.deepEqual(seen.errors, []);
  } finally {
    subscription.close();
  }
});

test("a tag token on another tag's job or on the whole user stream: 401, and the subscription gives up", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const b1 = await client.createJob({ ...imageJob(), tags: ["user:b"] });
  const tagToken = () => client.createStreamToken({ scope: "tag", tag: "user:a" });

  for (const [what, subscribe] of [
    ["user:b's job", (options) => subscribeJob(b1.request_id, options)],
    ["the stream without ?tag=", (options) => subscribeJobs(options)],
    ["another tag's stream", (options) => subscribeJobs({ ...options, tag: "user:b" })],
  ]) {
    const { subscription, seen } = watch(subscribe, tagToken);
    await until(() => subscription.state === "closed", `${what}: the subscription gave up`);
    assert.ok(subscription.error instanceof FalJobsError, `${what}: ${subscription.error}`);
    assert.deepEqual([subscription.error.status, subscription.error.error], [401, "not_authenticated"], what);
    assert.match(subscription.error.message, /tag/, `${what}: the message names the token's scope`);
    assert.equal(seen.tokens, 3, `${what}: a few fresh tokens were tried before giving up`);
    assert.ok(seen.errors.every((error) => error.status === 401), what);
    assert.deepEqual(seen.jobs, [], what);
  }

  // The same token does open user:a's jobs.
  const a1 = await client.createJob({ ...imageJob(), tags: ["user:a"] });
  const { subscription, seen } = watch((options) => subscribeJob(a1.request_id, options), tagToken);
  await until(() => subscription.state === "closed", "a1's stream ended");
  assert.equal(subscription.error, null);
  assert.ok(isSettled(seen.jobs.at(-1)));
  await client.waitForJob(b1.request_id, { timeoutMs: 60_000 });
});
