// Uploads from a browser, with progress: XMLHttpRequest, because fetch reports no upload progress.
// The browser holds no API key: on the service's own page the session cookie authenticates and
// `csrfToken` (GET /api/session) goes in X-CSRF-Token; an app of its own sends the file through its
// own server (`url`), with whatever headers that wants (`getHeaders`).

import { FalJobsError } from "./errors.js";
import { abortReason, errorFromText, joinUrl } from "./http.js";
import type { ParseJson } from "./http.js";
import type { Upload } from "./types.js";

export interface UploadProgress {
  loaded: number;
  /** Undefined when the browser cannot tell. */
  total: number | undefined;
  /** loaded / total, from 0 to 1; undefined when the total is unknown. */
  fraction: number | undefined;
}

/** The part of XMLHttpRequest the uploader uses. */
export type XMLHttpRequestConstructor = new () => XMLHttpRequest;

export interface UploadFileOptions {
  /** The service; "" (the default) for the page's own origin. */
  baseUrl?: string;
  /** Where to POST instead of `${baseUrl}/api/uploads` (an app's own route that passes the file on). */
  url?: string;
  /** The session's CSRF token (GET /api/session's `csrf_token`), sent as X-CSRF-Token. */
  csrfToken?: string;
  /** More headers, asked for before each upload (an app's own credential, say). */
  getHeaders?: () => Record<string, string> | Promise<Record<string, string>>;
  /** Send cookies to another origin (XMLHttpRequest's withCredentials). */
  withCredentials?: boolean;
  /** The file's type unless given (else application/octet-stream); the service reads the real one from its bytes. */
  contentType?: string;
  onProgress?: (progress: UploadProgress) => void;
  /** Aborts the upload; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  XMLHttpRequest?: XMLHttpRequestConstructor;
  parseJson?: ParseJson;
}

/**
 * POSTs `file` (the raw bytes) to /api/uploads and resolves the upload (201). A refusal rejects with
 * FalJobsError (401 a lost session, 403 a wrong CSRF token, 413, 415, 422, 429 with `retryAfterMs`);
 * a broken connection with FalJobsError status 0, `network_error`. Nothing is retried: the caller
 * decides (the same file again answers the same upload).
 */
export async function uploadFile(file: Blob, options: UploadFileOptions = {}): Promise<Upload> {
  const { signal } = options;
  if (signal?.aborted) throw abortReason(signal);
  const Xhr = options.XMLHttpRequest ?? (globalThis as { XMLHttpRequest?: XMLHttpRequestConstructor }).XMLHttpRequest;
  if (!Xhr) throw new TypeError("XMLHttpRequest: none here; on a server use FalJobsClient.upload");
  const extra = (await options.getHeaders?.()) ?? {};
  if (signal?.aborted) throw abortReason(signal);
  const parse = options.parseJson ?? JSON.parse;
  const url = options.url ?? joinUrl(options.baseUrl ?? "", "/api/uploads");
  const headers: Record<string, string> = {
    Accept: "application/json",
    "Content-Type": options.contentType || file.type || "application/octet-stream",
    ...(options.csrfToken ? { "X-CSRF-Token": options.csrfToken } : {}),
    ...extra,
  };
  return new Promise<Upload>((resolve, reject) => {
    const xhr = new Xhr();
    const onAbort = (): void => xhr.abort();
    const settle = (): void => signal?.removeEventListener("abort", onAbort);
    xhr.open("POST", url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    if (options.withCredentials) xhr.withCredentials = true;
    const onProgress = options.onProgress;
    if (onProgress) {
      xhr.upload.addEventListener("progress", (event) => {
        const total = event.lengthComputable ? event.total : undefined;
        onProgress({ loaded: event.loaded, total, fraction: total ? event.loaded / total : undefined });
      });
    }
    xhr.addEventListener("load", () => {
      settle();
      const header = (name: string): string | null => xhr.getResponseHeader(name);
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          return resolve(parse(xhr.responseText) as Upload);
        } catch (error) {
          return reject(error);
        }
      }
      reject(errorFromText(xhr.status, xhr.statusText, xhr.responseText, header, parse));
    });
    xhr.addEventListener("error", () => {
      settle();
      reject(FalJobsError.network(new Error("the connection broke during the upload")));
    });
    xhr.addEventListener("abort", () => {
      settle();
      reject(signal?.aborted ? abortReason(signal) : FalJobsError.network(new Error("the upload was aborted")));
    });
    signal?.addEventListener("abort", onAbort, { once: true });
    xhr.send(file);
  });
}
