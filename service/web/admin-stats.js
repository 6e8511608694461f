// The figures over a chosen window, from /api/admin/stats: per model (count, success rate, p50/p95
// queue and run time, spend), spend per user, failure reasons grouped by message; read again as
// jobs change, at most every ten seconds (each read is one stats query over the window).

import { $, ApiError, el, get, money, percent, row, seconds, showError, when } from "/static/admin-util.js";

const LIVE_REFRESH_MS = 10_000;
let refreshTimer = null;
let generation = 0; // bumped by every read: an older answer, landing after a newer one, is dropped

/** A job changed (the stream): the figures are read again, at most once per LIVE_REFRESH_MS. */
export function statsChanged() {
  if (refreshTimer === null) {
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      loadStats();
    }, LIVE_REFRESH_MS);
  }
}

export function wireStats() {
  $('[data-testid="stats-window"]').addEventListener("change", loadStats);
  $('[data-testid="stats-refresh"]').addEventListener("click", loadStats);
}

export async function loadStats() {
  const mine = ++generation;
  const span = $('[data-testid="stats-window"]').value;
  let stats;
  try {
    stats = await get(`/api/admin/stats?${new URLSearchParams({ since: span })}`);
  } catch (error) {
    if (mine !== generation) return;
    showError(error instanceof ApiError && error.status === 401
      ? "Your session ended: sign in again." : `Could not load the figures: ${error.message}`);
    return;
  }
  if (mine !== generation) return; // a newer read (another window, perhaps) is on its way or shown
  $('[data-testid="stats-range"]').textContent = `From ${when(stats.since)} to ${when(stats.until)}.`;
  fill("stats-models", 8, stats.models, (m) => row(
    el("code", {}, m.model_id), [m.jobs, "num"],
    [el("span", { title: `${m.completed} completed, ${m.failed} failed` }, percent(m.success_rate)), "num"],
    [seconds(m.queue_s.p50), "num"], [seconds(m.queue_s.p95), "num"],
    [seconds(m.run_s.p50), "num"], [seconds(m.run_s.p95), "num"], [money(m.spend), "num"],
  ));
  fill("stats-users", 3, stats.users, (u) => row(u.name ?? u.user_id, [u.jobs, "num"], [money(u.spend), "num"]));
  fill("stats-failures", 3, stats.failures, (f) => row(
    el("span", { class: "error-text" }, f.error), [f.jobs, "num"], f.models.join(", "),
  ));
}

function fill(testid, columns, items, toRow) {
  const body = $(`[data-testid="${testid}"] tbody`);
  if (!items.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: String(columns), class: "muted" }, "Nothing in this window.")));
    return;
  }
  body.replaceChildren(...items.map(toRow));
}
