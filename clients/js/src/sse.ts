// Server-Sent Events over fetch, for the server side (Node before 22 has no EventSource, and
// EventSource cannot send the Authorization header). Parsed as the HTML standard says:
// https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

export interface SseMessage {
  /** `message` when the event named none. */
  event: string;
  data: string;
  /** The stream's last event id once this message was dispatched (ids persist across messages). */
  lastEventId: string;
}

export class SseParser {
  /** The last event id, as EventSource keeps it: set by `id:` fields, kept until the next one. */
  lastEventId = "";
  /** The stream's last `retry:` hint in milliseconds. */
  retryMs: number | undefined;
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private idBuffer = "";
  private started = false;

  /** The messages that `chunk` completes. */
  feed(chunk: string): SseMessage[] {
    if (!this.started && chunk.length > 0) {
      this.started = true;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    this.buffer += chunk;
    const out: SseMessage[] = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      // A CR at the end of the buffer may be the first half of a CRLF: wait for the next chunk.
      if (c === "\r" && i === this.buffer.length - 1) break;
      const message = this.line(this.buffer.slice(start, i));
      if (message) out.push(message);
      if (c === "\r" && this.buffer[i + 1] === "\n") i++;
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  /** The end of the stream: an event not followed by a blank line is dropped, as the standard says. */
  end(): void {
    this.buffer = "";
    this.data = [];
    this.event = "";
  }

  private line(line: string): SseMessage | null {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") {
      if (!value.includes("\u0000")) this.idBuffer = value;
    } else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
    return null;
  }

  private dispatch(): SseMessage | null {
    this.lastEventId = this.idBuffer;
    const event = this.event || "message";
    this.event = "";
    if (this.data.length === 0) return null;
    const data = this.data.join("\n");
    this.data = [];
    return { event, data, lastEventId: this.lastEventId };
  }
}

/** The messages of an event stream's body, as they arrive; `parser` keeps the last id and retry hint. */
export async function* readSse(body: ReadableStream<Uint8Array>, parser: SseParser = new SseParser()): AsyncGenerator<SseMessage> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield* parser.feed(decoder.decode(value, { stream: true }));
    }
    yield* parser.feed(decoder.decode());
    parser.end();
  } finally {
    // Leaving early (the job ended, the caller stopped) closes the connection.
    reader.cancel().catch(() => {});
  }
}
