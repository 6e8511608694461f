// Uploads (FalJobsClient.upload) and a job that names one, against the live service. The browser's
// uploader (uploadFile, over XMLHttpRequest) runs in Chromium: the page uses it
// (tests/browser/test_page_uploads.py).

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import { FalJobsError, uploadRef } from "@fal-jobs/client";

import { assertJobFields, clientFor, newUser, solidPng } from "./helpers.js";

const I2V = "fal-ai/kling-video/v2.1/master/image-to-video";
const UPLOAD_FIELDS = ["content_type", "created_at", "expires_at", "height", "sha256", "size", "upload_id", "width"];

test("a PNG uploaded, then an image-to-video job names it as upload:<id> and completes", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const png = solidPng(64, 48, [10, 200, 30]);

  // The declared type is not believed: the service reads the bytes.
  const upload = await client.upload(png, { contentType: "application/octet-stream" });
  assert.deepEqual(Object.keys(upload).sort(), UPLOAD_FIELDS, "the upload's fields");
  assert.equal(upload.content_type, "image/png");
  assert.deepEqual([upload.width, upload.height, upload.size], [64, 48, png.length]);
  assert.equal(upload.sha256, createHash("sha256").update(png).digest("hex"));
  assert.ok(!Number.isNaN(Date.parse(upload.expires_at)) && Date.parse(upload.expires_at) > Date.now(),
            `expires_at is an ISO time ahead: ${upload.expires_at}`);

  // The same file as a Blob, an ArrayBuffer or a stream is the same upload.
  const asBlob = await client.upload(new Blob([png], { type: "image/png" }));
  const asBuffer = await client.upload(png.buffer.slice(png.byteOffset, png.byteOffset + png.length));
  const asStream = await client.upload(new Blob([png]).stream());
  assert.deepEqual([asBlob.upload_id, asBuffer.upload_id, asStream.upload_id], Array(3).fill(upload.upload_id));
  assert.deepEqual((await client.listUploads()).map((u) => u.upload_id), [upload.upload_id]);

  const created = await client.createJob({
    type: "video", model_id: I2V, input: { prompt: "it sways", image_url: uploadRef(upload) },
    tags: ["user:uploads"], metadata: { source: "upload" },
  });
  const done = await client.waitForJob(created.request_id, { timeoutMs: 120_000 });
  assert.equal(done.status, "completed", JSON.stringify(done.error));
  assert.equal(done.input.image_url, `upload:${upload.upload_id}`, "the job keeps the reference, not fal's URL");
  assert.deepEqual([done.tags, done.metadata], [["user:uploads"], { source: "upload" }]);
  assertJobFields(done, [], "a job's last stream event");
  assertJobFields(await client.getJob(created.request_id), ["links"], "GET /api/jobs/{id}");
  assert.equal(done.outputs[0]?.kind, "video");
});

test("a file the service does not take is FalJobsError 415, and nothing is stored", async () => {
  const user = await newUser();
  const retries = [];
  const client = clientFor(user.api_key, { onRetry: (info) => retries.push(info) });
  const text = new TextEncoder().encode("not an image, only text\n");
  await assert.rejects(client.upload(text, { contentType: "image/png" }), (error) => {
    assert.ok(error instanceof FalJobsError);
    assert.deepEqual([error.status, error.error], [415, "unsupported_media_type"]);
    assert.match(error.message, /image\/png/, "the message names what is taken");
    return true;
  });
  await assert.rejects(client.upload(new Blob([text]).stream()), { status: 415 });
  assert.deepEqual(retries, [], "a refusal is not retried");
  assert.deepEqual(await client.listUploads(), []);
  // A job naming an upload that is not the caller's: 422 naming the field, nothing sent to fal.
  await assert.rejects(
    client.createJob({ type: "video", model_id: I2V, input: { prompt: "x", image_url: `upload:${"0".repeat(32)}` } }),
    (error) => error instanceof FalJobsError && error.status === 422 && /input\.image_url/.test(error.message));
});

test("deleteUpload removes it; listModels gives each model's input fields", async () => {
  const user = await newUser();
  const client = clientFor(user.api_key);
  const upload = await client.upload(solidPng(8, 8, [1, 2, 3]));
  await client.deleteUpload(upload.upload_id);
  assert.deepEqual(await client.listUploads(), []);
  await assert.rejects(client.deleteUpload(upload.upload_id), { status: 404, error: "not_found" });

  const models = await client.listModels();
  const i2v = models.find((model) => model.model_id === I2V);
  assert.ok(i2v, `${I2V} in ${models.map((model) => model.model_id)}`);
  assert.equal(i2v.type, "video");
  assert.ok(Array.isArray(i2v.fields), "the emulator serves its schema");
  const fieldKeys = ["default", "description", "enum", "file", "maximum", "minimum", "name", "required", "type"];
  for (const field of i2v.fields) assert.deepEqual(Object.keys(field).sort(), fieldKeys, `the fields of ${field.name}`);
  const image = i2v.fields.find((field) => field.file === "image");
  assert.deepEqual([image?.name, image?.required], ["image_url", true]);
});
