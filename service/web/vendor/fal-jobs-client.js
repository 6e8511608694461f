// Generated from clients/js (@fal-jobs/client) by `npm run build:page` there: do not edit.

// dist/errors.js
var CODE_BY_STATUS = {
  400: "invalid_request",
  401: "not_authenticated",
  403: "forbidden",
  404: "not_found",
  405: "method_not_allowed",
  409: "conflict",
  410: "gone",
  413: "payload_too_large",
  415: "unsupported_media_type",
  416: "range_not_satisfiable",
  422: "invalid_request",
  429: "too_many_requests",
  500: "internal_error",
  502: "upstream_error",
  503: "unavailable"
};
var FalJobsError = class _FalJobsError extends Error {
  name = "FalJobsError";
  /** The HTTP status; 0 when the service could not be reached. */
  status;
  /** The service's error code: `not_found`, `too_many_requests`, `idempotency_in_progress`, … */
  error;
  /** From `Retry-After` (429, 503, 409 while an idempotent create is in flight). */
  retryAfterMs;
  /** The service's `X-Request-Id`: its log lines for this call carry the same id. */
  requestId;
  constructor(status, error, message, options = {}) {
    super(message, options.cause === void 0 ? void 0 : { cause: options.cause });
    this.status = status;
    this.error = error;
    this.retryAfterMs = options.retryAfterMs;
    this.requestId = options.requestId;
  }
  static network(cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    return new _FalJobsError(0, "network_error", `the service could not be reached: ${reason}`, { cause });
  }
  static codeFor(status) {
    return CODE_BY_STATUS[status] ?? "error";
  }
};

// dist/http.js
function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value.trim() === "")
    return void 0;
  const text = value.trim();
  if (/^\d+$/.test(text))
    return Number(text) * 1e3;
  const date = Date.parse(text);
  return Number.isNaN(date) ? void 0 : Math.max(0, date - now);
}
function abortReason(signal) {
  if (signal.reason !== void 0)
    return signal.reason;
  const error = new Error("This operation was aborted");
  error.name = "AbortError";
  return error;
}
function backoff(attempt, base, max) {
  const full = Math.min(max, base * 2 ** Math.max(0, attempt));
  return Math.round(full / 2 + Math.random() * (full / 2));
}
function joinUrl(base, path) {
  return base.replace(/\/+$/, "") + path;
}
function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== void 0 && value !== null && value !== "")
      search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
async function errorFrom(response, parse = JSON.parse) {
  let text = "";
  try {
    text = await response.text();
  } catch {
  }
  return errorFromText(response.status, response.statusText, text, (name) => response.headers.get(name), parse);
}
function errorFromText(status, statusText, text, header, parse = JSON.parse) {
  const options = {
    retryAfterMs: parseRetryAfter(header("retry-after")),
    requestId: header("x-request-id") ?? void 0
  };
  try {
    const body = parse(text);
    if (body && typeof body.error === "string" && typeof body.message === "string") {
      return new FalJobsError(status, body.error, body.message, options);
    }
  } catch {
  }
  const message = text.trim().slice(0, 200) || `HTTP ${status} ${statusText}`.trim();
  return new FalJobsError(status, FalJobsError.codeFor(status), message, options);
}

// dist/types.js
var TERMINAL_STATUSES = /* @__PURE__ */ new Set(["completed", "failed", "cancelled", "deleted"]);
function uploadRef(upload) {
  return `upload:${typeof upload === "string" ? upload : upload.upload_id}`;
}
function isSettled(job) {
  return TERMINAL_STATUSES.has(job.status) && !(job.outputs ?? []).some((output) => output.status === "pending");
}
function isTerminal(job) {
  return TERMINAL_STATUSES.has(job.status);
}

// dist/browser.js
var MAX_REFUSED_TOKENS = 3;
function holdToken(token, now) {
  const value = typeof token === "string" ? token : token.token;
  const expiresAt = typeof token === "string" ? void 0 : token.expires_at ?? void 0;
  if (expiresAt === void 0)
    return { value, expiresAtMs: void 0, refreshAtMs: void 0 };
  const expiresAtMs = expiresAt * 1e3;
  const margin = Math.min(3e4, Math.max(0, expiresAtMs - now) / 4);
  return { value, expiresAtMs, refreshAtMs: expiresAtMs - margin };
}
var LiveSubscription = class {
  spec;
  options;
  state = "connecting";
  error = null;
  lastEventId;
  closed = false;
  source = null;
  probe = null;
  timer;
  token;
  mustRefresh = false;
  attempt = 0;
  refused = 0;
  everLive = false;
  generation = 0;
  versions = /* @__PURE__ */ new Map();
  EventSourceImpl;
  parse;
  constructor(spec, options) {
    this.spec = spec;
    this.options = options;
    const impl = options.EventSource ?? globalThis.EventSource;
    if (!impl)
      throw new TypeError("EventSource: none here; pass options.EventSource (Node before 22 has none)");
    this.EventSourceImpl = impl;
    this.parse = options.parseJson ?? JSON.parse;
    this.lastEventId = options.lastEventId ?? (options.replay ? "0" : void 0);
    this.token = options.token === void 0 ? null : holdToken(options.token, Date.now());
    void this.connect();
  }
  close() {
    if (this.closed)
      return;
    this.closed = true;
    this.generation++;
    clearTimeout(this.timer);
    this.probe?.abort();
    this.source?.close();
    this.source = null;
    this.setState("closed");
  }
  async connect() {
    const generation = ++this.generation;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    let token;
    try {
      token = await this.currentToken();
    } catch (error) {
      if (generation !== this.generation)
        return;
      this.report(error instanceof Error ? error : new Error(String(error)));
      return this.retryLater();
    }
    if (generation !== this.generation)
      return;
    const url = joinUrl(this.options.baseUrl ?? "", this.spec.path) + query({ ...this.spec.params, token: token.value, last_event_id: this.lastEventId });
    const resumed = this.lastEventId !== void 0;
    const source = new this.EventSourceImpl(url);
    this.source = source;
    let opened = false;
    const current = () => this.source === source && !this.closed;
    source.addEventListener("open", () => {
      if (!current())
        return;
      opened = true;
      this.attempt = 0;
      this.refused = 0;
      this.everLive = true;
      this.error = null;
      this.setState("live");
      if (resumed)
        this.options.onReady?.({ resumed: true });
    });
    source.addEventListener("ready", (event) => {
      if (!current())
        return;
      this.remember(event);
      this.options.onReady?.({ resumed: false });
    });
    source.addEventListener("job", (event) => {
      if (!current())
        return;
      this.remember(event);
      this.deliver(event.data);
    });
    source.addEventListener("error", () => {
      if (!current())
        return;
      source.close();
      this.source = null;
      if (opened)
        this.retryLater();
      else
        void this.diagnose(url, token.fresh, generation);
    });
  }
  /** The held token while it is good; else a new one from getToken. */
  async currentToken() {
    const held = this.token;
    const expiring = held?.refreshAtMs !== void 0 && Date.now() >= held.refreshAtMs;
    if (held && !this.mustRefresh && !expiring)
      return { value: held.value, fresh: false };
    const token = holdToken(await this.options.getToken(), Date.now());
    if (!token.value)
      throw new TypeError("getToken: answered no token");
    this.token = token;
    this.mustRefresh = false;
    return { value: token.value, fresh: true };
  }
  /** Why a connection failed before it opened, asked of the same URL with fetch. */
  async diagnose(url, freshToken, generation) {
    const fetchImpl = this.options.fetch ?? (globalThis.fetch ? (i, o) => globalThis.fetch(i, o) : void 0);
    if (!fetchImpl) {
      this.mustRefresh = true;
      return this.retryLater();
    }
    const probe = new AbortController();
    this.probe = probe;
    let error = null;
    try {
      const response = await fetchImpl(url, { headers: { Accept: "text/event-stream" }, cache: "no-store", signal: probe.signal });
      if (response.status === 204)
        return this.finish();
      if (!response.ok)
        error = await errorFrom(response, this.parse);
    } catch (thrown) {
      if (generation !== this.generation)
        return;
      error = FalJobsError.network(thrown);
    } finally {
      probe.abort();
      if (this.probe === probe)
        this.probe = null;
    }
    if (generation !== this.generation)
      return;
    if (error === null)
      return this.retryLater();
    this.report(error);
    if (error.status === 401) {
      this.mustRefresh = true;
      if (!freshToken)
        return this.retryLater(0);
      if (++this.refused >= MAX_REFUSED_TOKENS)
        return this.fail(error);
      return this.retryLater();
    }
    if (error.status === 0 || error.status === 429 || error.status >= 500)
      return this.retryLater(error.retryAfterMs);
    this.fail(error);
  }
  deliver(data) {
    let job;
    try {
      job = this.parse(data);
    } catch (error) {
      this.report(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    const known = this.versions.get(job.request_id);
    if (known === void 0 || job.version > known) {
      this.versions.set(job.request_id, job.version);
      this.options.onUpdate(job);
    }
    if (this.spec.endsWhenSettled && isSettled(job))
      this.finish();
  }
  remember(event) {
    const id = event.lastEventId;
    if (id)
      this.lastEventId = id;
  }
  retryLater(delayMs) {
    if (this.closed)
      return;
    this.generation++;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    const wait = delayMs ?? backoff(this.attempt, this.options.reconnectDelayMs ?? 1e3, this.options.maxReconnectDelayMs ?? 3e4);
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.connect(), wait);
  }
  report(error) {
    this.error = error;
    this.options.onError?.(error);
  }
  fail(error) {
    this.error = error;
    this.close();
  }
  finish() {
    this.close();
  }
  setState(state) {
    if (this.state === state)
      return;
    this.state = state;
    this.options.onState?.(state);
  }
};
function subscribeJob(requestId, options) {
  const path = `/api/jobs/${encodeURIComponent(requestId)}/events`;
  return new LiveSubscription({ path, params: {}, endsWhenSettled: true }, options);
}
function subscribeJobs(options) {
  const status = Array.isArray(options.status) ? options.status.join(",") : options.status;
  const params = { tag: options.tag, status, type: options.type };
  return new LiveSubscription({ path: "/api/events", params, endsWhenSettled: false }, options);
}

// dist/upload.js
async function uploadFile(file, options = {}) {
  const { signal } = options;
  if (signal?.aborted)
    throw abortReason(signal);
  const Xhr = options.XMLHttpRequest ?? globalThis.XMLHttpRequest;
  if (!Xhr)
    throw new TypeError("XMLHttpRequest: none here; on a server use FalJobsClient.upload");
  const extra = await options.getHeaders?.() ?? {};
  if (signal?.aborted)
    throw abortReason(signal);
  const parse = options.parseJson ?? JSON.parse;
  const url = options.url ?? joinUrl(options.baseUrl ?? "", "/api/uploads");
  const headers = {
    Accept: "application/json",
    "Content-Type": options.contentType || file.type || "application/octet-stream",
    ...options.csrfToken ? { "X-CSRF-Token": options.csrfToken } : {},
    ...extra
  };
  return new Promise((resolve, reject) => {
    const xhr = new Xhr();
    const onAbort = () => xhr.abort();
    const settle = () => signal?.removeEventListener("abort", onAbort);
    xhr.open("POST", url);
    for (const [name, value] of Object.entries(headers))
      xhr.setRequestHeader(name, value);
    if (options.withCredentials)
      xhr.withCredentials = true;
    const onProgress = options.onProgress;
    if (onProgress) {
      xhr.upload.addEventListener("progress", (event) => {
        const total = event.lengthComputable ? event.total : void 0;
        onProgress({ loaded: event.loaded, total, fraction: total ? event.loaded / total : void 0 });
      });
    }
    xhr.addEventListener("load", () => {
      settle();
      const header = (name) => xhr.getResponseHeader(name);
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          return resolve(parse(xhr.responseText));
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
export {
  FalJobsError,
  TERMINAL_STATUSES,
  isSettled,
  isTerminal,
  subscribeJob,
  subscribeJobs,
  uploadFile,
  uploadRef
};
