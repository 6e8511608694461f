// fal-jobs in the browser: a form that submits jobs and a list kept live by ONE stream, the
// user's, through the TypeScript client's `subscribeJobs` (clients/js, served as one ES module:
// tokens, their refresh, resume after the last event id and backoff all live there).
//
// Order of work at start: session → stream (wait for its `ready`) → list. Jobs from the list and
// the stream are merged by request_id, keeping the highest `version`, so overlap is harmless.

import { subscribeJobs } from "/static/vendor/fal-jobs-client.js";
import { $, ApiError, el, money, placeNewestFirst, requestJson } from "/static/dom.js";
import { imageField, imagePicker } from "/static/image-input.js";

const TERMINAL = new Set(["completed", "failed", "cancelled", "deleted"]);
const STATUS_LABEL = {
  pending: "Queued",
  in_progress: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  deleted: "Deleted",
};
const STATUS_MARK = { pending: "◷", in_progress: "▶", completed: "✓", failed: "✕", cancelled: "⊘", deleted: "⌫" };
const ENDINGS = { completed: "completed", failed: "failed", cancelled: "was cancelled" };
const ANNOUNCEMENTS_KEPT = 3;
const PAGE_SIZE = 50;
const READY_WAIT_MS = 5000;
const RESTART_MS = 5000;
const CONNECTION_TEXT = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", closed: "Not connected" };

const state = {
  session: null, // {user_id, name, csrf_token, local_emulator}
  models: [],
  jobs: new Map(), // request_id -> job
  cards: new Map(), // request_id -> card element
  nextCursor: null,
  subscription: null, // the one stream (subscribeJobs)
  restartTimer: null,
  stopped: false,
  submitting: false,
  picker: null, // the input image, for a model that starts from one
};

// ---------------------------------------------------------------- HTTP

async function api(method, path, body, extraHeaders = {}) {
  const headers = { Accept: "application/json", ...extraHeaders };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf_token;
  return requestJson(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

// ---------------------------------------------------------------- start

async function start() {
  wireStatic();
  showInvalidLinkNotice(location.hash === "#sign-in-link-invalid");
  let session;
  try {
    session = await api("GET", "/api/session");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showSignedOut();
    return showFatal(`Could not reach the service: ${error.message}`);
  }
  state.session = session;
  showSignedIn();
  await loadModels();
  const ready = openStream(undefined);
  await Promise.race([ready, delay(READY_WAIT_MS)]);
  await loadJobs();
  setInterval(tickElapsed, 1000);
}

function wireStatic() {
  $('[data-testid="dismiss-notice"]').addEventListener("click", () => {
    showInvalidLinkNotice(false);
    history.replaceState(null, "", location.pathname + location.search);
  });
  window.addEventListener("hashchange", () => showInvalidLinkNotice(location.hash === "#sign-in-link-invalid"));
  $('[data-testid="sign-out"]').addEventListener("click", signOut);
  $('[data-testid="load-more"]').addEventListener("click", () => loadJobs(state.nextCursor));
  const form = $('[data-testid="job-form"]');
  form.addEventListener("submit", submitJob);
  for (const radio of form.elements.type) radio.addEventListener("change", syncKind);
  const model = $('[data-testid="model"]');
  model.addEventListener("change", () => {
    model.title = model.value;
    syncImageInput();
  });
  state.picker = imagePicker($('[data-testid="image-input"]'), {
    csrfToken: () => state.session?.csrf_token ?? "",
    onSessionLost: () => sessionLost(),
  });
}

function showInvalidLinkNotice(show) {
  $('[data-testid="sign-in-invalid"]').hidden = !show;
}

function showSignedOut() {
  $('[data-testid="loading"]').hidden = true;
  $('[data-testid="workspace"]').hidden = true;
  $('[data-testid="signed-out"]').hidden = false;
  $('[data-testid="user-name"]').hidden = true;
  $('[data-testid="sign-out"]').hidden = true;
  $('[data-testid="connection"]').hidden = true;
  $('[data-testid="emulator-tag"]').hidden = true;
}

function showSignedIn() {
  $('[data-testid="loading"]').hidden = true;
  $('[data-testid="signed-out"]').hidden = true;
  $('[data-testid="workspace"]').hidden = false;
  const who = $('[data-testid="user-name"]');
  who.textContent = state.session.name;
  who.hidden = false;
  $('[data-testid="sign-out"]').hidden = false;
  $('[data-testid="connection"]').hidden = false;
  // No FAL_KEY: the local emulator makes the pictures, and the page says so.
  $('[data-testid="emulator-tag"]').hidden = !state.session.local_emulator;
}

function showFatal(message) {
  const loading = $('[data-testid="loading"]');
  loading.hidden = false;
  loading.textContent = message;
}

function sessionLost() {
  stopStream();
  state.session = null;
  showSignedOut();
}

async function signOut() {
  try {
    await api("POST", "/api/session/sign-out");
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) return;
  }
  sessionLost();
}

// ---------------------------------------------------------------- the form

async function loadModels() {
  try {
    state.models = await api("GET", "/api/models");
  } catch (error) {
    if (error.status === 401) return sessionLost();
    showFormError(`Could not load the models: ${error.message}`);
  }
  const form = $('[data-testid="job-form"]');
  for (const radio of form.elements.type) {
    radio.disabled = !state.models.some((m) => m.type === radio.value);
  }
  const checked = [...form.elements.type].find((r) => r.checked);
  if (checked.disabled) {
    const usable = [...form.elements.type].find((r) => !r.disabled);
    if (usable) usable.checked = true;
  }
  syncKind();
}

function currentKind() {
  return $('[data-testid="job-form"]').elements.type.value || "image";
}

function syncKind() {
  const kind = currentKind();
  for (const block of document.querySelectorAll(".options[data-kind]")) block.hidden = block.dataset.kind !== kind;
  const select = $('[data-testid="model"]');
  const previous = select.value;
  // The whole id, in the option and its title (shown on hover where the select is narrower).
  select.replaceChildren(
    ...state.models.filter((m) => m.type === kind).map((m) => el("option", { value: m.model_id, title: m.model_id }, m.model_id)),
  );
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  select.title = select.value;
  syncImageInput();
}

/** The image picker for a model that starts from an image; its frame is the image's, no aspect ratio. */
function syncImageInput() {
  const takesImage = imageField($('[data-testid="model"]').value, state.models) !== null;
  $('[data-testid="image-input"]').hidden = !takesImage;
  $('[data-testid="aspect-ratio-field"]').hidden = takesImage;
}

function showFormError(message) {
  const box = $('[data-testid="form-error"]');
  box.textContent = message || "";
  box.hidden = !message;
}

function readInput(form) {
  const kind = currentKind();
  const prompt = form.elements.prompt.value.trim();
  if (!prompt) throw new Error("Write a prompt first.");
  const input = { prompt };
  if (kind === "image") {
    input.image_size = form.elements.image_size.value;
    const count = Number(form.elements.num_images.value || 1);
    if (!Number.isInteger(count) || count < 1 || count > 4) throw new Error("Images: a whole number from 1 to 4.");
    input.num_images = count;
    const seed = form.elements.seed.value.trim();
    if (seed !== "") {
      const n = Number(seed);
      if (!Number.isSafeInteger(n) || n < 0) throw new Error("Seed: a whole number from 0 to 2^53.");
      input.seed = n;
    }
  } else {
    input.duration = form.elements.duration.value;
    if (!imageField(form.elements.model_id.value, state.models)) input.aspect_ratio = form.elements.aspect_ratio.value;
  }
  const extraText = form.elements.extra.value.trim();
  if (extraText) {
    let extra;
    try {
      extra = JSON.parse(extraText);
    } catch (error) {
      throw new Error(`Advanced input is not valid JSON: ${error.message}`);
    }
    if (extra === null || typeof extra !== "object" || Array.isArray(extra)) {
      throw new Error("Advanced input must be a JSON object, like {\"key\": \"value\"}.");
    }
    Object.assign(input, extra);
  }
  return { type: kind, model_id: form.elements.model_id.value, input };
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.currentTarget;
  showFormError("");
  let request;
  try {
    request = readInput(form);
  } catch (error) {
    return showFormError(error.message);
  }
  if (!request.model_id) return showFormError("No model is available for this kind of job.");
  if (state.submitting) return;
  // Busy but not disabled: a disabled button loses the focus, and a keyboard user their place.
  const button = $('[data-testid="submit"]');
  state.submitting = true;
  button.setAttribute("aria-disabled", "true");
  button.textContent = "Submitting…";
  try {
    // The input image (an upload under way is waited for); one given in the advanced JSON wins.
    const field = imageField(request.model_id, state.models);
    if (field && !(field in request.input)) request.input[field] = await state.picker.value();
    // One key per submission: a retry after a dropped connection answers the same job instead of
    // paying fal twice.
    const idempotency = { "Idempotency-Key": crypto.randomUUID() };
    let job;
    try {
      job = await api("POST", "/api/jobs", request, idempotency);
    } catch (error) {
      if (error instanceof ApiError) throw error;
      job = await api("POST", "/api/jobs", request, idempotency); // the network failed: retry once, safely
    }
    upsert(job);
  } catch (error) {
    if (error.status === 401) return sessionLost();
    showFormError(error.message);
  } finally {
    state.submitting = false;
    button.removeAttribute("aria-disabled");
    button.textContent = "Generate";
  }
}

// ---------------------------------------------------------------- the stream

function setConnection(connection) {
  const box = $('[data-testid="connection"]');
  box.dataset.state = connection === "closed" ? "idle" : connection;
  $(".connection-text", box).textContent = CONNECTION_TEXT[connection];
}

/** A stream token for the user's stream, on the session cookie; a lost session ends the stream. */
async function streamToken() {
  try {
    return await api("POST", "/api/stream-tokens", { scope: "user" });
  } catch (error) {
    if (error.status === 401) sessionLost();
    throw error;
  }
}

/** Opens the user's stream; resolves once it is subscribed (its `ready` or a resume's open). */
function openStream(lastEventId) {
  return new Promise((resolve) => {
    if (state.stopped || !state.session) return resolve();
    setConnection(lastEventId === undefined ? "connecting" : "reconnecting");
    let subscription = null;
    subscription = subscribeJobs({
      getToken: streamToken,
      lastEventId,
      onUpdate: upsert,
      onReady: ({ resumed }) => {
        // A fresh stream only carries changes from its `ready` on: if the list was read before it
        // (the stream was late or failed at first), read it again so nothing in between is missed.
        if (!resumed && state.listLoaded) loadJobs();
        resolve();
      },
      onState: (connection) => {
        if (subscription !== null && subscription !== state.subscription && state.subscription !== null) return;
        setConnection(connection);
        if (connection === "closed") {
          resolve();
          restartStream();
        }
      },
    });
    state.subscription = subscription;
  });
}

/** The client gave up (fresh tokens refused again and again): while signed in, a new one resumes. */
function restartStream() {
  const old = state.subscription;
  if (state.stopped || !state.session || !old || !old.error) return;
  setConnection("reconnecting");
  clearTimeout(state.restartTimer);
  state.restartTimer = setTimeout(() => openStream(old.lastEventId), RESTART_MS);
}

function stopStream() {
  state.stopped = true;
  clearTimeout(state.restartTimer);
  const subscription = state.subscription;
  state.subscription = null;
  if (subscription) subscription.close();
  setConnection("closed");
}

// ---------------------------------------------------------------- the list

async function loadJobs(cursor = null) {
  const more = $('[data-testid="load-more"]');
  let page;
  try {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) query.set("cursor", cursor);
    page = await api("GET", `/api/jobs?${query}`);
  } catch (error) {
    if (error.status === 401) return sessionLost();
    showFormError(`Could not load your jobs: ${error.message}`);
    return;
  }
  for (const job of page.jobs) upsert(job);
  if (!cursor) state.listLoaded = true;
  state.nextCursor = page.next_cursor;
  more.hidden = !page.next_cursor;
  refreshEmpty();
}

function upsert(job) {
  if (!job || !job.request_id) return;
  if (state.session && job.user_id && job.user_id !== state.session.user_id) return;
  const known = state.jobs.get(job.request_id);
  if (known && known.version >= job.version) return;
  // Seen here running, now over: said aloud (a job already over when listed is not news).
  const ended = known && !TERMINAL.has(known.status) && Object.hasOwn(ENDINGS, job.status);
  state.jobs.set(job.request_id, job);
  let card = state.cards.get(job.request_id);
  if (!card) {
    card = createCard(job);
    state.cards.set(job.request_id, card);
    placeNewestFirst($('[data-testid="jobs"]'), card, job, state.jobs);
  }
  updateCard(card, job);
  refreshEmpty();
  if (ended) announce(job);
}

/** "Image job completed: a red fox in snow", in the polite live region. */
function announce(job) {
  const words = String(job.input?.prompt ?? "").trim().split(/\s+/).filter(Boolean);
  const what = words.length === 0 ? job.model_id : words.length > 8 ? `${words.slice(0, 8).join(" ")}…` : words.join(" ");
  const region = $('[data-testid="announcements"]');
  region.append(el("p", {}, `${job.type === "video" ? "Video" : "Image"} job ${ENDINGS[job.status]}: ${what}`));
  while (region.childElementCount > ANNOUNCEMENTS_KEPT) region.firstElementChild.remove();
}

function refreshEmpty() {
  $('[data-testid="jobs-empty"]').hidden = state.jobs.size > 0;
}

function createCard(job) {
  const cancel = el("button", { type: "button", class: "secondary cancel", "data-testid": "cancel" }, "Cancel");
  cancel.addEventListener("click", () => cancelJob(job.request_id, cancel));
  return el(
    "li",
    // tabindex -1: the card takes the focus when its Cancel button goes (see updateCard).
    { class: "job card", tabindex: "-1", dataset: { requestId: job.request_id, type: job.type } },
    el(
      "div",
      { class: "job-head" },
      el("span", { class: "badge", "data-testid": "job-status" }),
      el("span", { class: "kind-label" }, job.type === "video" ? "Video" : "Image"),
      el("span", { class: "elapsed", "data-testid": "job-elapsed", title: "Elapsed time" }),
    ),
    el("p", { class: "prompt", "data-testid": "job-prompt" }, String(job.input?.prompt ?? "")),
    el("p", { class: "model muted" }, job.model_id,
       el("span", { class: "cost", "data-testid": "job-cost", title: "Our estimate of fal's bill, not fal's invoice" })),
    tagList(job),
    el("p", { class: "detail", "data-testid": "job-detail", hidden: true }),
    el("div", { class: "media-row" }, inputImage(job),
      el("div", { class: "media", "data-testid": "job-media", hidden: true })),
    el("div", { class: "actions" }, cancel, el("span", { class: "action-error", role: "alert" })),
  );
}

/** The image the job started from (an upload of ours, or a URL), shown beside its result. */
function inputImage(job) {
  const raw = job.input?.image_url;
  if (typeof raw !== "string" || !raw) return null;
  const url = raw.startsWith("upload:")
    ? `/api/uploads/${encodeURIComponent(raw.slice("upload:".length))}` // the session cookie opens it
    : safeUrl(raw);
  if (!url) return null;
  const prompt = String(job.input?.prompt ?? "").trim();
  return el("figure", { class: "input-image" },
    el("img", { src: url, alt: `Input image${prompt ? ` for: ${prompt}` : ""}`, loading: "lazy", decoding: "async",
                "data-testid": "job-input-image" }),
    el("figcaption", { class: "muted" }, "Input"));
}

/** The job's tags (the app's labels, fixed at creation), small; none: nothing. */
function tagList(job) {
  const tags = Array.isArray(job.tags) ? job.tags.filter((t) => typeof t === "string") : [];
  if (tags.length === 0) return null;
  return el("ul", { class: "job-tags", "aria-label": "Tags", "data-testid": "job-tags" },
    ...tags.map((tag) => el("li", { class: "job-tag" }, tag)));
}

function badgeText(job) {
  const label = STATUS_LABEL[job.status] ?? job.status;
  if (job.status === "pending" && Number.isInteger(job.queue_position)) {
    return job.queue_position === 0 ? `${label} · next` : `${label} · position ${job.queue_position}`;
  }
  return label;
}

function costText(cost) {
  const amount = cost?.final ?? cost?.estimated;
  if (amount === null || amount === undefined) return "";
  const written = money(amount, cost.currency);
  return cost.final === null || cost.final === undefined ? ` · about ${written}` : ` · ${written}`;
}

function updateCard(card, job) {
  card.dataset.status = job.status;
  card.dataset.version = String(job.version);
  const badge = $(".badge", card);
  badge.dataset.status = job.status;
  badge.textContent = "";
  badge.append(el("span", { "aria-hidden": "true", class: "mark" }, STATUS_MARK[job.status] ?? "•"), ` ${badgeText(job)}`);

  const detail = $(".detail", card);
  let detailText = "";
  detail.className = "detail";
  detail.dataset.testid = "job-detail";
  if (job.status === "failed") {
    detailText = job.error || "The job failed.";
    detail.classList.add("error");
    detail.dataset.testid = "job-error";
  } else if (job.status === "cancelled") {
    detailText = job.error || "Cancelled.";
  } else if (job.status === "in_progress" || job.status === "pending") {
    const logs = job.logs || [];
    detailText = logs.length ? logs[logs.length - 1].message : job.status === "pending" ? "Waiting in fal's queue…" : "Starting…";
    detail.classList.add("log");
    detail.dataset.testid = "job-log";
  }
  detail.textContent = detailText;
  detail.hidden = !detailText;
  $('[data-testid="job-cost"]', card).textContent = costText(job.cost);

  const terminal = TERMINAL.has(job.status);
  const actions = $(".actions", card);
  // The focused Cancel button is about to be hidden: the focus stays in its card, not the page body.
  if (terminal && actions.contains(document.activeElement)) card.focus();
  actions.hidden = terminal;
  renderMedia(card, job);
  renderElapsed(card, job);
}

function safeUrl(raw) {
  try {
    const url = new URL(raw, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// Our durable copy once it is stored (it outlives fal's CDN; the session cookie opens it),
// fal's URL until then or when it could not be copied.
function mediaSources(job) {
  const outputs = Array.isArray(job.outputs) ? job.outputs : [];
  const byKind = { image: outputs.filter((o) => o.kind === "image"), video: outputs.filter((o) => o.kind === "video") };
  return (kind, index, falUrl) => {
    const output = byKind[kind][index];
    if (output && output.status === "stored") {
      return { url: safeUrl(output.url), download: safeUrl(`${output.url}?download=1`), output };
    }
    return { url: safeUrl(falUrl), download: null, output };
  };
}

const OUTPUT_NOTES = {
  pending: ["output-pending", "Saving a copy…"],
  failed: ["output-failed", "Not kept: fal's copy only"],
};

// A note under media that is not (yet) our copy; updated in place as the copy settles, so the
// media element itself is replaced only when its source changes.
function outputNote(output) {
  if (!output) return null;
  const note = el("span", { class: "output-note", "data-output-index": String(output.index) });
  setOutputNote(note, output);
  return note;
}

function setOutputNote(note, output) {
  const [testid, text] = OUTPUT_NOTES[output.status] ?? ["output-note", ""];
  note.dataset.testid = testid;
  note.textContent = text;
  note.title = output.status === "failed" ? output.error || "" : "";
}

function downloadLink(source, label) {
  if (!source.download) return outputNote(source.output);
  return el("a", { href: source.download, download: "", class: "download", "data-testid": "job-download" }, label);
}

function renderMedia(card, job) {
  const box = $('[data-testid="job-media"]', card);
  const outputs = Array.isArray(job.outputs) ? job.outputs : [];
  const key = `${job.status}:${outputs.map((o) => (o.status === "stored" ? "s" : "-")).join("")}`;
  if ((job.status !== "completed" && job.status !== "deleted") || !job.result) return;
  if (box.dataset.rendered === key) {
    for (const note of box.querySelectorAll("[data-output-index]")) {
      const output = outputs[Number(note.dataset.outputIndex)];
      if (output) setOutputNote(note, output);
    }
    return;
  }
  box.dataset.rendered = key;
  box.replaceChildren();
  if (job.status === "deleted") {
    box.classList.remove("images");
    box.append(el("p", { class: "output-note", "data-testid": "job-media-deleted" }, "Media deleted."));
    box.hidden = false;
    return;
  }
  const result = job.result;
  const prompt = String(job.input?.prompt ?? "");
  const source = mediaSources(job);
  if (Array.isArray(result.images)) {
    box.classList.add("images");
    result.images.forEach((image, index) => {
      const media = source("image", index, image.url);
      const url = media.url;
      if (!url) return;
      const size = image.width && image.height ? ` (${image.width}×${image.height})` : "";
      const img = el("img", {
        src: url,
        alt: `${prompt || "Generated image"} — image ${index + 1}${size}`,
        loading: "lazy",
        decoding: "async",
        "data-testid": "job-image",
      });
      if (image.width && image.height) {
        img.setAttribute("width", String(image.width));
        img.setAttribute("height", String(image.height));
      }
      box.append(el("figure", { class: "output" },
        el("a", { href: url, target: "_blank", rel: "noopener noreferrer", title: "Open full size" }, img),
        downloadLink(media, `Download image ${index + 1}`)));
    });
  }
  const video = result.video;
  if (video && safeUrl(video.url)) {
    const media = source("video", 0, video.url);
    const player = el("video", { controls: true, playsInline: true, preload: "metadata", "data-testid": "job-video" });
    player.append(el("source", { src: media.url, type: video.content_type || "video/mp4" }));
    player.append(el("a", { href: media.url }, "Download the video"));
    box.append(player);
    const link = downloadLink(media, "Download the video");
    if (link) box.append(link);
  }
  box.hidden = box.childElementCount === 0;
}

function formatElapsed(ms) {
  const seconds = Math.max(0, ms) / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

function renderElapsed(card, job) {
  const started = Date.parse(job.created_at);
  if (Number.isNaN(started)) return;
  let end = Date.now();
  if (TERMINAL.has(job.status)) end = Date.parse(job.completed_at || job.updated_at);
  const text = formatElapsed(end - started);
  const node = $('[data-testid="job-elapsed"]', card);
  if (node.textContent !== text) node.textContent = text;
}

function tickElapsed() {
  for (const [id, job] of state.jobs) {
    if (!TERMINAL.has(job.status)) renderElapsed(state.cards.get(id), job);
  }
}

async function cancelJob(requestId, button) {
  const card = state.cards.get(requestId);
  const problem = $(".action-error", card);
  if (button.getAttribute("aria-disabled") === "true") return;
  problem.textContent = "";
  button.setAttribute("aria-disabled", "true"); // not `disabled`: that would drop the focus
  try {
    upsert(await api("POST", `/api/jobs/${encodeURIComponent(requestId)}/cancel`));
  } catch (error) {
    if (error.status === 401) return sessionLost();
    problem.textContent = error.message;
  } finally {
    button.removeAttribute("aria-disabled");
  }
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

start();
