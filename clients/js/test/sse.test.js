// The event-stream parser on its own: what the HTML standard says a stream means, whatever the
// chunks it arrives in.

import assert from "node:assert/strict";
import { test } from "node:test";

import { SseParser, parseRetryAfter, readSse } from "@fal-jobs/client";

function parseAll(chunks) {
  const parser = new SseParser();
  return { messages: chunks.flatMap((chunk) => parser.feed(chunk)), parser };
}

const STREAM = "\ufeffretry: 2500\n: heartbeat\nevent: ready\nid: 7\ndata: {\"position\":7}\n\n" +
  "event: job\r\nid: 8.123\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n" +
  "data:no space\rid\r\r" +
  "id: bad\u0000id\nevent: job\ndata: x\n\n" +
  "event: job\ndata: never finished\n";

test("fields, comments, CR, LF and CRLF, multi-line data, ids kept across messages", () => {
  const expected = [
    { event: "ready", data: "{\"position\":7}", lastEventId: "7" },
    { event: "job", data: "{\"a\":\n1}", lastEventId: "8.123" },
    { event: "message", data: "no space", lastEventId: "" }, // a bare `id` field empties the id
    { event: "job", data: "x", lastEventId: "" }, // an id with NUL is ignored
  ];
  const whole = parseAll([STREAM]);
  assert.deepEqual(whole.messages, expected);
  assert.equal(whole.parser.retryMs, 2500);
  // Every split of the stream into two chunks (a CRLF cut in half included) means the same.
  for (let i = 1; i < STREAM.length; i++) {
    assert.deepEqual(parseAll([STREAM.slice(0, i), STREAM.slice(i)]).messages, expected, `split at ${i}`);
  }
});

test("readSse reads a body of bytes, a character cut between chunks included", async () => {
  const bytes = new TextEncoder().encode("event: job\ndata: café ✓\n\n");
  const body = new ReadableStream({
    start(controller) {
      for (const byte of bytes) controller.enqueue(new Uint8Array([byte]));
      controller.close();
    },
  });
  const messages = [];
  for await (const message of readSse(body)) messages.push(message);
  assert.deepEqual(messages, [{ event: "job", data: "café ✓", lastEventId: "" }]);
});

test("Retry-After: seconds or an HTTP date", () => {
  assert.equal(parseRetryAfter("5"), 5000);
  assert.equal(parseRetryAfter(new Date(Date.UTC(2030, 0, 1, 0, 0, 10)).toUTCString(), Date.UTC(2030, 0, 1)), 10_000);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
});
