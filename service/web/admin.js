// The operator's console: every job across users (filtered, keyset-paged, live over ONE stream,
// /api/admin/events), one job's timeline, the figures over a window, a CSV of the filtered jobs.
//
// Order of work at start, as on the user's page: session → stream (wait for its `ready`) → list.
// A change of a job in the table updates its row in place (by version: never backwards); a job
// the table does not hold yet makes the console read the first page of the filter again, so a new
// job appears only when the server's filter takes it, with its user's name. A `ready` after the
// list loaded (a resume from too far back, or a stream that fell behind: the server sends no
// replay) reads the first page again and drops the older rows, which may have changed unseen.

import { $, ApiError, costText, el, get, showError, when } from "/static/admin-util.js";
import { placeNewestFirst } from "/static/dom.js";
import { loadStats, statsChanged, wireStats } from "/static/admin-stats.js";
import { badge, jobChanged, openTimeline, timelineStale, wireTimeline } from "/static/admin-timeline.js";

const PAGE_SIZE = 50;
const FILTERS = ["status", "model", "user", "tag", "since", "until", "q"];
const READY_WAIT_MS = 5000;
const RETRY_MS = 5000;
const REFRESH_MS = 300;
const CONNECTION_TEXT = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", closed: "Not connected" };

const state = {
  filter: new URLSearchParams(), // the applied filter (also the address bar's and the CSV link's)
  jobs: new Map(), // request_id -> job (with user_name)
  rows: new Map(), // request_id -> <tr>
  nextCursor: null,
  listLoaded: false,
  generation: 0, // bumped by every new filter: an older answer is dropped
  source: null,
  lastEventId: null,
  refreshTimer: null,
};

// ---------------------------------------------------------------- start

async function start() {
  let session;
  try {
    session = await get("/api/session");
  } catch (error) {
    return showError(error instanceof ApiError && error.status === 401
      ? "Your session ended: open a new sign-in link, then this page again." : `Could not reach the service: ${error.message}`);
  }
  $('[data-testid="user-name"]').textContent = session.name;
  wireTimeline();
  wireStats();
  wireFilters();
  $('[data-testid="older"]').addEventListener("click", () => loadPage(state.nextCursor));
  loadModels();
  loadStats();
  await Promise.race([openStream(), delay(READY_WAIT_MS)]);
  await loadPage(null);
}

async function loadModels() {
  try {
    const models = await get("/api/models");
    $("#model-ids").replaceChildren(...models.map((m) => el("option", { value: m.model_id })));
  } catch {
    // Only the suggestions are missing: any model id can still be typed.
  }
}

// ---------------------------------------------------------------- filters

function wireFilters() {
  const form = $('[data-testid="filters"]');
  const given = new URLSearchParams(location.search);
  for (const name of FILTERS) if (given.get(name)) form.elements[name].value = given.get(name);
  state.filter = readFilter(form);
  showFilter();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilter(readFilter(form));
  });
  // After the reset has cleared the fields: the empty filter.
  form.addEventListener("reset", () => setTimeout(() => applyFilter(readFilter(form))));
}

function readFilter(form) {
  const filter = new URLSearchParams();
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (value) filter.set(name, value);
  }
  return filter;
}

/** The filter in the address bar (a view to bookmark or share) and in the CSV link. */
function showFilter() {
  const query = state.filter.toString();
  history.replaceState(null, "", `/admin${query ? `?${query}` : ""}`);
  $('[data-testid="csv-link"]').href = `/api/admin/jobs.csv${query ? `?${query}` : ""}`;
}

function applyFilter(filter) {
  state.filter = filter;
  showFilter();
  clearTable();
  loadPage(null);
}

function clearTable() {
  state.generation++;
  state.jobs.clear();
  state.rows.clear();
  state.nextCursor = null;
  $('[data-testid="job-rows"]').replaceChildren();
}

/** Drops the rows the first page just read does not hold (older ones: they may be stale). */
function keepOnly(jobs) {
  const kept = new Set(jobs.map((job) => job.request_id));
  for (const [requestId, tr] of state.rows) {
    if (kept.has(requestId)) continue;
    tr.remove();
    state.rows.delete(requestId);
    state.jobs.delete(requestId);
  }
}

// ---------------------------------------------------------------- the list

/** A page of the filter; `replace`: the first page, in place of every row held. */
async function loadPage(cursor, { replace = false } = {}) {
  if (replace) state.generation++; // a page of the rows held, still on its way, is dropped
  const generation = state.generation;
  const query = new URLSearchParams(state.filter);
  query.set("limit", String(PAGE_SIZE));
  if (cursor) query.set("cursor", cursor);
  let page;
  try {
    page = await get(`/api/admin/jobs?${query}`);
  } catch (error) {
    if (generation === state.generation) showError(`Could not load the jobs: ${error.message}`);
    return;
  }
  if (generation !== state.generation) return; // the filter changed meanwhile
  showError("");
  // Rows are kept, not rebuilt: one a live change updated meanwhile keeps its newer version.
  if (replace) keepOnly(page.jobs);
  // A first page read again (a new job) keeps the cursor after the oldest row shown.
  if (cursor !== null || replace || state.rows.size === 0) state.nextCursor = page.next_cursor;
  for (const job of page.jobs) upsert(job);
  if (cursor === null) state.listLoaded = true;
  $('[data-testid="older"]').hidden = !state.nextCursor;
  $('[data-testid="jobs-empty"]').hidden = state.rows.size > 0;
}

/** A job from the list (it carries `user_name`) or the stream (it does not: the row keeps it). */
function upsert(job) {
  const known = state.jobs.get(job.request_id);
  if (known && known.version >= job.version) return;
  const merged = { ...job, user_name: job.user_name ?? known?.user_name ?? null };
  state.jobs.set(job.request_id, merged);
  let tr = state.rows.get(job.request_id);
  if (!tr) {
    tr = createRow(merged);
    state.rows.set(job.request_id, tr);
    placeNewestFirst($('[data-testid="job-rows"]'), tr, merged, state.jobs);
  }
  updateRow(tr, merged);
  $('[data-testid="jobs-empty"]').hidden = true;
}

function createRow(job) {
  const open = el("button", { type: "button", class: "link-button", "data-testid": "open-timeline",
                              title: `Timeline of ${job.request_id}` }, when(job.created_at));
  const tr = el("tr", { "data-testid": "job-row", dataset: { requestId: job.request_id } },
    el("td", { class: "created" }, open),
    el("td", { "data-testid": "row-user" }),
    el("td", { "data-testid": "row-model" }, el("code", {}, job.model_id)),
    el("td", { "data-testid": "row-status" }),
    el("td", { class: "num", "data-testid": "row-cost" }),
    el("td", { class: "row-text", "data-testid": "row-text" }),
  );
  tr.addEventListener("click", () => openTimeline(job.request_id));
  return tr;
}

function updateRow(tr, job) {
  tr.dataset.status = job.status;
  tr.dataset.version = String(job.version);
  $('[data-testid="row-user"]', tr).textContent = job.user_name ?? job.user_id;
  $('[data-testid="row-status"]', tr).replaceChildren(badge(job.status));
  $('[data-testid="row-cost"]', tr).textContent = costText(job.cost);
  const text = $('[data-testid="row-text"]', tr);
  text.textContent = job.status === "failed" && job.error ? job.error : String(job.input?.prompt ?? "");
  text.classList.toggle("error-text", job.status === "failed");
  // Shown as it changed, but marked: it no longer answers the status asked for.
  const wanted = state.filter.get("status");
  tr.classList.toggle("unmatched", Boolean(wanted) && wanted !== job.status);
  tr.title = tr.classList.contains("unmatched") ? `Now ${job.status}: no longer matches the filter` : "";
}

// ---------------------------------------------------------------- live

function setConnection(connection) {
  const box = $('[data-testid="connection"]');
  box.dataset.state = connection === "closed" ? "idle" : connection;
  $(".connection-text", box).textContent = CONNECTION_TEXT[connection];
}

/** Opens the stream of every user's jobs; resolves once it is subscribed (its `ready`, or a resume's open). */
function openStream() {
  return new Promise((resolve) => {
    const resumed = state.lastEventId !== null;
    const query = resumed ? `?${new URLSearchParams({ last_event_id: state.lastEventId })}` : "";
    // The session cookie opens it (same origin); on a dropped connection the browser reconnects
    // by itself with Last-Event-ID, and the stream resumes after the last event it sent.
    const source = new EventSource(`/api/admin/events${query}`);
    state.source = source;
    setConnection(resumed ? "reconnecting" : "connecting");
    const remember = (event) => {
      if (event.lastEventId) state.lastEventId = event.lastEventId;
    };
    source.addEventListener("open", () => {
      setConnection("live");
      if (resumed) resolve();
    });
    source.addEventListener("ready", (event) => {
      remember(event);
      // A fresh stream carries changes from its `ready` on: a list read before it is read again.
      if (state.listLoaded) {
        loadPage(null, { replace: true });
        timelineStale();
        statsChanged();
      }
      resolve();
    });
    source.addEventListener("job", (event) => {
      remember(event);
      onChange(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      setConnection("reconnecting");
      if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      resolve();
      setTimeout(() => {
        if (state.source === source) openStream();
      }, RETRY_MS);
    });
  });
}

function onChange(job) {
  if (state.jobs.has(job.request_id)) upsert(job);
  else refreshFirstPage();
  jobChanged(job.request_id);
  statsChanged();
}

/** A job the table lacks changed: the first page of the filter, read again, at most once per
 * REFRESH_MS. A throttle, not a debounce: with every user's jobs on the stream, events may never
 * pause for REFRESH_MS, and a timer reset by each would never fire. */
function refreshFirstPage() {
  if (state.refreshTimer !== null) return; // a read is already due: it sees this change too
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    loadPage(null);
  }, REFRESH_MS);
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

start();
