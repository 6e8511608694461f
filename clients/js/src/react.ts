// React hooks over the browser side. One subscription per mounted hook: it opens in an effect and
// closes in that effect's cleanup, so an unmount closes its stream and StrictMode's mount, unmount,
// mount leaves exactly one open. getToken and the callbacks are read through a ref: a new function
// on each render does not reopen the stream.

import { useEffect, useRef, useState } from "react";

import { subscribeJob, subscribeJobs } from "./browser.js";
import type { ConnectionState, SubscribeJobsOptions, SubscribeOptions } from "./browser.js";
import type { Job, JobStatus } from "./types.js";

type Wiring = "onUpdate" | "onState" | "onError" | "onReady";

export type UseFalJobOptions = Omit<SubscribeOptions, Wiring>;

export interface UseFalJobsOptions extends Omit<SubscribeJobsOptions, Wiring> {
  /** Jobs the app already has (e.g. listed on its server with listJobs({tag})), kept live by the stream. */
  initialJobs?: Job[];
}

export interface FalJobState {
  /** The newest state seen; null until the first arrives. */
  job: Job | null;
  connection: ConnectionState;
  /** The last failure; null while the stream is live. */
  error: Error | null;
}

export interface FalJobsState {
  /** Newest first. */
  jobs: Job[];
  connection: ConnectionState;
  error: Error | null;
}

function useLatest<T>(value: T): { readonly current: T } {
  const ref = useRef(value);
  ref.current = value;
  return ref;
}

/** One job, live, until it settles: `{job, connection, error}`. No stream while requestId is empty. */
export function useFalJob(requestId: string | null | undefined, options: UseFalJobOptions): FalJobState {
  const [job, setJob] = useState<Job | null>(null);
  const [connection, setConnection] = useState<ConnectionState>(requestId ? "connecting" : "closed");
  const [error, setError] = useState<Error | null>(null);
  const latest = useLatest(options);
  const baseUrl = options.baseUrl;

  useEffect(() => {
    setJob((current) => (current?.request_id === requestId ? current : null));
    setError(null);
    if (!requestId) {
      setConnection("closed");
      return undefined;
    }
    setConnection("connecting");
    const { token, lastEventId, reconnectDelayMs, maxReconnectDelayMs, EventSource, fetch, parseJson } = latest.current;
    const subscription = subscribeJob(requestId, {
      ...definedOnly({ baseUrl, token, lastEventId, reconnectDelayMs, maxReconnectDelayMs, EventSource, fetch, parseJson }),
      getToken: () => latest.current.getToken(),
      onUpdate: (next) => setJob((current) => (current && current.request_id === next.request_id && current.version >= next.version ? current : next)),
      onState: (state) => {
        setConnection(state);
        if (state === "live") setError(null);
      },
      onError: setError,
    });
    return () => subscription.close();
  }, [requestId, baseUrl, latest]);

  return { job, connection, error };
}

/** Every job of the token's stream (the user's, or one tag's), live: `{jobs, connection, error}`. */
export function useFalJobs(options: UseFalJobsOptions): FalJobsState {
  const [byId, setById] = useState<ReadonlyMap<string, Job>>(() => merge(new Map(), options.initialJobs ?? []));
  const [connection, setConnection] = useState<ConnectionState>("connecting");
  const [error, setError] = useState<Error | null>(null);
  const latest = useLatest(options);
  const { baseUrl, tag, type, replay } = options;
  const status = Array.isArray(options.status) ? options.status.join(",") : options.status;

  useEffect(() => {
    setConnection("connecting");
    setError(null);
    const { token, lastEventId, reconnectDelayMs, maxReconnectDelayMs, EventSource, fetch, parseJson } = latest.current;
    const subscription = subscribeJobs({
      ...definedOnly({ baseUrl, tag, type, replay, token, lastEventId, reconnectDelayMs, maxReconnectDelayMs, EventSource,
                       fetch, parseJson }),
      ...(status ? { status: status.split(",") as JobStatus[] } : {}),
      getToken: () => latest.current.getToken(),
      onUpdate: (job) => setById((current) => merge(current, [job])),
      onState: (state) => {
        setConnection(state);
        if (state === "live") setError(null);
      },
      onError: setError,
    });
    return () => subscription.close();
  }, [baseUrl, tag, type, status, replay, latest]);

  const initial = options.initialJobs;
  useEffect(() => {
    if (initial?.length) setById((current) => merge(current, initial));
  }, [initial]);

  return { jobs: newestFirst(byId), connection, error };
}

/** `current` with each of `jobs` whose version is higher than the one it holds; the same map when none is. */
function merge(current: ReadonlyMap<string, Job>, jobs: readonly Job[]): ReadonlyMap<string, Job> {
  let next: Map<string, Job> | null = null;
  for (const job of jobs) {
    const known = (next ?? current).get(job.request_id);
    if (known && known.version >= job.version) continue;
    next ??= new Map(current);
    next.set(job.request_id, job);
  }
  return next ?? current;
}

const sorted = new WeakMap<ReadonlyMap<string, Job>, Job[]>();

function newestFirst(byId: ReadonlyMap<string, Job>): Job[] {
  let jobs = sorted.get(byId);
  if (!jobs) {
    jobs = [...byId.values()].sort((a, b) =>
      a.created_at === b.created_at ? b.request_id.localeCompare(a.request_id) : (a.created_at < b.created_at ? 1 : -1));
    sorted.set(byId, jobs);
  }
  return jobs;
}

/** The entries whose value is defined (exactOptionalPropertyTypes: an option is absent, not undefined). */
function definedOnly<T extends Record<string, unknown>>(values: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(values).filter(([, value]) => value !== undefined)) as
    { [K in keyof T]?: Exclude<T[K], undefined> };
}
