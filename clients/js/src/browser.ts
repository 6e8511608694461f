// The browser side: no API key. A stream token (from the app's own server, through `getToken`) goes
// in the query, because EventSource cannot send headers. The subscription reconnects by itself,
// resuming after the last event id it saw (ids are opaque), and asks for a fresh token before the
// one it holds expires and whenever the service refused one.
//
// EventSource hides why a connection failed: when one fails before it opened, the same URL is
// asked once with fetch, whose status says what to do (401: a new token; 204: the job's stream is
// over; 429 and 503: wait out Retry-After; another 4xx: give up; else back off and try again).

import { FalJobsError } from "./errors.js";
import { backoff, errorFrom, joinUrl, query } from "./http.js";
import type { FetchLike, ParseJson } from "./http.js";
import { isSettled } from "./types.js";
import type { Job, JobStatus, JobType } from "./types.js";

export type ConnectionState = "connecting" | "live" | "reconnecting" | "closed";

/** What `getToken` may answer: the token, or POST /api/stream-tokens' answer (its `expires_at` lets
 * the subscription refresh it before it expires rather than after a refusal). */
export type TokenLike = string | { token: string; expires_at?: number | null | undefined };
export type GetToken = () => TokenLike | Promise<TokenLike>;

/** The part of EventSource the subscription uses: the browser's, Node's (22+), or a polyfill. */
export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: Event) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string) => EventSourceLike;

export interface SubscribeOptions {
  /** The service; "" (the default) for the page's own origin. */
  baseUrl?: string;
  /** A stream token for this stream (from the app's server); asked again when it expires or is refused. */
  getToken: GetToken;
  /** A token to start with (e.g. a create's `stream_token`), so the first connect asks nobody. */
  token?: TokenLike;
  /** Each newer state of a job; never a version at or below one already delivered for that job. */
  onUpdate: (job: Job) => void;
  onState?: (state: ConnectionState) => void;
  /** A failure: a refused or failed connection (retried unless the state becomes `closed`), or getToken's. */
  onError?: (error: Error) => void;
  /** Resume after this event id (one the service sent). */
  lastEventId?: string;
  /** The first reconnect's delay (doubled per failure, up to maxReconnectDelayMs). */
  reconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  EventSource?: EventSourceConstructor;
  fetch?: FetchLike;
  parseJson?: ParseJson;
}

export interface SubscribeJobsOptions extends SubscribeOptions {
  /** Only the jobs carrying this tag (the token must allow it). */
  tag?: string;
  status?: JobStatus | JobStatus[];
  type?: JobType;
  /** Start with every change the stream can replay (resume from its beginning) instead of from now. */
  replay?: boolean;
  /** The stream is subscribed: its `ready` (resumed false), or a resumed connection's open. A fresh
   * stream carries changes from its `ready` on: load the list after it to miss nothing. */
  onReady?: (info: { resumed: boolean }) => void;
}

export interface Subscription {
  readonly state: ConnectionState;
  /** The last event id seen: where a reconnect resumes. */
  readonly lastEventId: string | undefined;
  /** The last failure; null again once the stream is live. */
  readonly error: Error | null;
  close(): void;
}

/** Consecutive refusals (401) of freshly fetched tokens before the subscription gives up. */
const MAX_REFUSED_TOKENS = 3;

interface HeldToken {
  value: string;
  expiresAtMs: number | undefined;
  refreshAtMs: number | undefined;
}

interface StreamSpec {
  path: string;
  params: Record<string, string | undefined>;
  /** A job stream: over once the job is settled. */
  endsWhenSettled: boolean;
}

function holdToken(token: TokenLike, now: number): HeldToken {
  const value = typeof token === "string" ? token : token.token;
  const expiresAt = typeof token === "string" ? undefined : token.expires_at ?? undefined;
  if (expiresAt === undefined) return { value, expiresAtMs: undefined, refreshAtMs: undefined };
  const expiresAtMs = expiresAt * 1000;
  // A quarter of its life before it expires, and at most 30 s before.
  const margin = Math.min(30_000, Math.max(0, expiresAtMs - now) / 4);
  return { value, expiresAtMs, refreshAtMs: expiresAtMs - margin };
}

class LiveSubscription implements Subscription {
  state: ConnectionState = "connecting";
  error: Error | null = null;
  lastEventId: string | undefined;
  private closed = false;
  private source: EventSourceLike | null = null;
  private probe: AbortController | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private token: HeldToken | null;
  private mustRefresh = false;
  private attempt = 0;
  private refused = 0;
  private everLive = false;
  private generation = 0;
  private readonly versions = new Map<string, number>();
  private readonly EventSourceImpl: EventSourceConstructor;
  private readonly parse: ParseJson;

  constructor(private readonly spec: StreamSpec, private readonly options: SubscribeJobsOptions) {
    const impl = options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    if (!impl) throw new TypeError("EventSource: none here; pass options.EventSource (Node before 22 has none)");
    this.EventSourceImpl = impl;
    this.parse = options.parseJson ?? JSON.parse;
    this.lastEventId = options.lastEventId ?? (options.replay ? "0" : undefined);
    this.token = options.token === undefined ? null : holdToken(options.token, Date.now());
    void this.connect();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.generation++;
    clearTimeout(this.timer);
    this.probe?.abort();
    this.source?.close();
    this.source = null;
    this.setState("closed");
  }

  private async connect(): Promise<void> {
    const generation = ++this.generation;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    let token: { value: string; fresh: boolean };
    try {
      token = await this.currentToken();
    } catch (error) {
      if (generation !== this.generation) return;
      this.report(error instanceof Error ? error : new Error(String(error)));
      return this.retryLater();
    }
    if (generation !== this.generation) return;
    const url = joinUrl(this.options.baseUrl ?? "", this.spec.path) +
      query({ ...this.spec.params, token: token.value, last_event_id: this.lastEventId });
    const resumed = this.lastEventId !== undefined;
    const source = new this.EventSourceImpl(url);
    this.source = source;
    let opened = false;
    const current = (): boolean => this.source === source && !this.closed;
    source.addEventListener("open", () => {
      if (!current()) return;
      opened = true;
      this.attempt = 0;
      this.refused = 0;
      this.everLive = true;
      this.error = null;
      this.setState("live");
      if (resumed) this.options.onReady?.({ resumed: true });
    });
    source.addEventListener("ready", (event) => {
      if (!current()) return;
      this.remember(event);
      this.options.onReady?.({ resumed: false });
    });
    source.addEventListener("job", (event) => {
      if (!current()) return;
      this.remember(event);
      this.deliver((event as MessageEvent<string>).data);
    });
    source.addEventListener("error", () => {
      if (!current()) return;
      // EventSource would reconnect by itself, but with the token it was opened with and without
      // telling why it failed: the subscription reconnects on its own terms instead.
      source.close();
      this.source = null;
      if (opened) this.retryLater();
      else void this.diagnose(url, token.fresh, generation);
    });
  }

  /** The held token while it is good; else a new one from getToken. */
  private async currentToken(): Promise<{ value: string; fresh: boolean }> {
    const held = this.token;
    const expiring = held?.refreshAtMs !== undefined && Date.now() >= held.refreshAtMs;
    if (held && !this.mustRefresh && !expiring) return { value: held.value, fresh: false };
    const token = holdToken(await this.options.getToken(), Date.now());
    if (!token.value) throw new TypeError("getToken: answered no token");
    this.token = token;
    this.mustRefresh = false;
    return { value: token.value, fresh: true };
  }

  /** Why a connection failed before it opened, asked of the same URL with fetch. */
  private async diagnose(url: string, freshToken: boolean, generation: number): Promise<void> {
    const fetchImpl = this.options.fetch ?? (globalThis.fetch ? (i: string, o?: RequestInit) => globalThis.fetch(i, o) : undefined);
    if (!fetchImpl) {
      this.mustRefresh = true; // the likeliest cause, and the one only a new token cures
      return this.retryLater();
    }
    const probe = new AbortController();
    this.probe = probe;
    let error: FalJobsError | null = null;
    try {
      const response = await fetchImpl(url, { headers: { Accept: "text/event-stream" }, cache: "no-store", signal: probe.signal });
      if (response.status === 204) return this.finish();
      if (!response.ok) error = await errorFrom(response, this.parse);
    } catch (thrown) {
      if (generation !== this.generation) return;
      error = FalJobsError.network(thrown);
    } finally {
      probe.abort(); // a probe that opened the stream closes it
      if (this.probe === probe) this.probe = null;
    }
    if (generation !== this.generation) return;
    if (error === null) return this.retryLater(); // it opens now: the failure has passed
    this.report(error);
    if (error.status === 401) {
      this.mustRefresh = true;
      if (!freshToken) return this.retryLater(0);
      if (++this.refused >= MAX_REFUSED_TOKENS) return this.fail(error);
      return this.retryLater();
    }
    if (error.status === 0 || error.status === 429 || error.status >= 500) return this.retryLater(error.retryAfterMs);
    this.fail(error); // 400, 403, 404: asking again gets the same answer
  }

  private deliver(data: string): void {
    let job: Job;
    try {
      job = this.parse(data) as Job;
    } catch (error) {
      this.report(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    const known = this.versions.get(job.request_id);
    if (known === undefined || job.version > known) {
      this.versions.set(job.request_id, job.version);
      this.options.onUpdate(job);
    }
    if (this.spec.endsWhenSettled && isSettled(job)) this.finish();
  }

  private remember(event: Event): void {
    const id = (event as MessageEvent).lastEventId;
    if (id) this.lastEventId = id;
  }

  private retryLater(delayMs?: number): void {
    if (this.closed) return;
    this.generation++;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    const wait = delayMs ?? backoff(this.attempt, this.options.reconnectDelayMs ?? 1000,
                                    this.options.maxReconnectDelayMs ?? 30_000);
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.connect(), wait);
  }

  private report(error: Error): void {
    this.error = error;
    this.options.onError?.(error);
  }

  private fail(error: Error): void {
    this.error = error;
    this.close();
  }

  private finish(): void {
    this.close();
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.options.onState?.(state);
  }
}

/**
 * One job, live: its snapshot, then each change, until its last event (final status, every output
 * settled) or a 204; then the state is `closed`.
 */
export function subscribeJob(requestId: string, options: SubscribeOptions): Subscription {
  const path = `/api/jobs/${encodeURIComponent(requestId)}/events`;
  return new LiveSubscription({ path, params: {}, endsWhenSettled: true }, options);
}

/** Every change of the token's jobs (all of the user's, or one tag's), until `close()`. */
export function subscribeJobs(options: SubscribeJobsOptions): Subscription {
  const status = Array.isArray(options.status) ? options.status.join(",") : options.status;
  const params = { tag: options.tag, status, type: options.type };
  return new LiveSubscription({ path: "/api/events", params, endsWhenSettled: false }, options);
}
