// What the node tests share. They run against the live service that tests/test_js_client.py starts:
// FAL_JOBS_URL goes through a TCP proxy the tests can cut, FAL_JOBS_DIRECT_URL does not, and
// FAL_JOBS_CONTROL_URL makes users, releases held fal requests and cuts or stops the proxy.

import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";

import { FalJobsClient, isSettled, subscribeJobs } from "@fal-jobs/client";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is unset: run these tests through tests/test_js_client.py`);
  return value;
}

export const SERVICE_URL = required("FAL_JOBS_URL");
export const DIRECT_URL = required("FAL_JOBS_DIRECT_URL");
export const CONTROL_URL = required("FAL_JOBS_CONTROL_URL");
export const API_KEY = required("FAL_JOBS_API_KEY");

if (typeof globalThis.EventSource !== "function") {
  throw new Error("no EventSource: run node with --experimental-eventsource (Node 22 and later)");
}

export async function control(path, body = {}) {
  const response = await fetch(CONTROL_URL + path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`control ${path}: ${answer.error}`);
  return answer;
}

/** A user of its own (fresh counts and limits): `{api_key, user_id, name}`. */
export function newUser(limits = {}) {
  return control("/users", limits);
}

export const release = (requestId) => control("/release", { request_id: requestId });
export const cutProxy = () => control("/proxy/cut");
export const proxyDown = () => control("/proxy/down");
export const proxyUp = () => control("/proxy/up");

/** A client with quick retries, through the proxy unless `baseUrl` says otherwise. */
export function clientFor(apiKey, options = {}) {
  return new FalJobsClient({ baseUrl: SERVICE_URL, apiKey, retryDelayMs: 20, ...options });
}

/** An image job; `held`: it waits in fal's queue until released once, and runs until released again. */
export function imageJob({ held = false, ...input } = {}) {
  const faults = held ? { fal_emulator: { queue_ms: 0, hold: true } } : {};
  return { type: "image", model_id: "fal-ai/flux/schnell", input: { prompt: "a red fox", ...input, ...faults } };
}

/** Waits until `predicate()` is true (a deadline only so that a broken test fails instead of hanging). */
export async function until(predicate, what, limitMs = 30_000) {
  const deadline = Date.now() + limitMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`not within ${limitMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Every version of a job the service recorded, in order: the user's stream replayed from its start. */
export async function recordedVersions(client, requestId) {
  const versions = [];
  let settled = false;
  const subscription = subscribeJobs({
    baseUrl: DIRECT_URL,
    replay: true,
    getToken: () => client.createStreamToken({ scope: "user" }),
    onUpdate: (job) => {
      if (job.request_id !== requestId) return;
      versions.push(job.version);
      settled ||= isSettled(job);
    },
  });
  try {
    await until(() => settled, `the replay reached the end of ${requestId}`);
  } finally {
    subscription.close();
  }
  return versions;
}

/** Versions strictly growing: no state twice, none going back. */
export function assertIncreasing(versions, what) {
  for (let i = 1; i < versions.length; i++) {
    assert.ok(versions[i] > versions[i - 1], `${what}: version ${versions[i]} after ${versions[i - 1]} (${versions})`);
  }
}

/** A job stream starts with the job's current state (its snapshot): from there on, every recorded
 * version once, in order. */
export function assertEveryStateFrom(delivered, recorded, what) {
  assert.ok(delivered.length > 0, `${what}: nothing delivered`);
  assert.deepEqual(delivered, recorded.filter((version) => version >= delivered[0]), what);
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A real PNG of one colour, `width` × `height` (the service reads its size from the header). */
export function solidPng(width, height, [r, g, b]) {
  const chunk = (kind, data) => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(kind, "latin1"), data]);
    const tail = Buffer.alloc(4);
    tail.writeUInt32BE(crc32(body));
    return Buffer.concat([head, body, tail]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: width }, () => [r, g, b]).flat())]);
  const rows = Buffer.concat(Array.from({ length: height }, () => row));
  return new Uint8Array(Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(rows)), chunk("IEND", Buffer.alloc(0)),
  ]));
}

/** The fields a job carries on the wire (docs/api.md, "The job"). */
export const JOB_FIELDS = [
  "completed_at", "cost", "created_at", "error", "error_type", "input", "logs", "metadata", "mode", "model_id", "outputs",
  "queue_position", "request_id", "result", "status", "tags", "type", "updated_at", "user_id", "version",
];

/** `job`'s own fields are exactly JOB_FIELDS plus `extra`. */
export function assertJobFields(job, extra, what) {
  const keys = Object.keys(job).sort();
  assert.deepEqual(keys, [...JOB_FIELDS, ...extra].sort(), `${what}: the job's fields`);
}
