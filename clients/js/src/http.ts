// What every call shares: URLs, JSON, the error shape, Retry-After, waits that an AbortSignal ends.

import { FalJobsError } from "./errors.js";

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;
export type ParseJson = (text: string) => unknown;

/** `Retry-After` in milliseconds: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value == null || value.trim() === "") return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** The signal's reason (an AbortError unless the caller gave one), as fetch rejects with it. */
export function abortReason(signal: AbortSignal): unknown {
  if (signal.reason !== undefined) return signal.reason;
  const error = new Error("This operation was aborted");
  error.name = "AbortError";
  return error;
}

/** Resolves after `ms`; rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Backoff with jitter: `base` doubled per attempt up to `max`, then a random half to all of it. */
export function backoff(attempt: number, base: number, max: number): number {
  const full = Math.min(max, base * 2 ** Math.max(0, attempt));
  return Math.round(full / 2 + Math.random() * (full / 2));
}

/** A random UUID (v4); Node 18 has no global `crypto`, so getRandomValues is not assumed either. */
export function randomId(): string {
  const crypto = (globalThis as { crypto?: Crypto }).crypto;
  if (crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** `base` + `path`, the base's trailing slashes dropped; an empty base keeps the path relative. */
export function joinUrl(base: string, path: string): string {
  return base.replace(/\/+$/, "") + path;
}

/** A query string (with its `?`) of the defined values, or "". */
export function query(params: Record<string, string | number | undefined | null>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** The error an unsuccessful answer carries: its error shape, or a code for its status. */
export async function errorFrom(response: Response, parse: ParseJson = JSON.parse): Promise<FalJobsError> {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // the body broke off: the status still says what happened
  }
  return errorFromText(response.status, response.statusText, text, (name) => response.headers.get(name), parse);
}

/** `errorFrom` for an answer read by other means (XMLHttpRequest): its status, body and headers. */
export function errorFromText(status: number, statusText: string, text: string,
                              header: (name: string) => string | null, parse: ParseJson = JSON.parse): FalJobsError {
  const options = {
    retryAfterMs: parseRetryAfter(header("retry-after")),
    requestId: header("x-request-id") ?? undefined,
  };
  try {
    const body = parse(text) as { error?: unknown; message?: unknown } | null;
    if (body && typeof body.error === "string" && typeof body.message === "string") {
      return new FalJobsError(status, body.error, body.message, options);
    }
  } catch {
    // not JSON: a proxy's page, say
  }
  const message = text.trim().slice(0, 200) || `HTTP ${status} ${statusText}`.trim();
  return new FalJobsError(status, FalJobsError.codeFor(status), message, options);
}
