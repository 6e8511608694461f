// One job's full timeline in a dialog: the job, its cost, every event (status, queue position),
// its log lines, what fal sent (the delivery log) and the copies of its outputs.

import { $, ApiError, el, get, money, row, showError, when } from "/static/admin-util.js";

const RELOAD_MS = 300;
let openId = null;
let reloadTimer = null;

const dialog = () => $('[data-testid="timeline"]');

export function wireTimeline() {
  $('[data-testid="timeline-close"]').addEventListener("click", () => dialog().close());
  dialog().addEventListener("close", () => {
    openId = null;
    clearTimeout(reloadTimer);
    reloadTimer = null;
  });
}

export async function openTimeline(requestId) {
  openId = requestId;
  const body = $('[data-testid="timeline-body"]');
  body.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  if (!dialog().open) dialog().showModal();
  await loadTimeline(requestId);
}

/** A live change of the job whose timeline is open: read it again, at most once per RELOAD_MS (a
 * throttle: a debounce would never fire while its changes keep coming closer than that). */
export function jobChanged(requestId) {
  if (requestId === openId) timelineStale();
}

/** The open timeline may have changed unseen (the stream started afresh): read it again. */
export function timelineStale() {
  if (openId === null || reloadTimer !== null) return;
  const requestId = openId;
  reloadTimer = setTimeout(() => {
    reloadTimer = null;
    loadTimeline(requestId);
  }, RELOAD_MS);
}

async function loadTimeline(requestId) {
  let timeline;
  try {
    timeline = await get(`/api/admin/jobs/${encodeURIComponent(requestId)}/timeline`);
  } catch (error) {
    if (requestId === openId) {
      $('[data-testid="timeline-body"]').replaceChildren(el("p", { class: "form-error" }, error.message));
    }
    if (error instanceof ApiError && error.status === 401) showError("Your session ended: sign in again.");
    return;
  }
  if (requestId !== openId) return;
  $('[data-testid="timeline-body"]').replaceChildren(...render(timeline));
}

function render(timeline) {
  const job = timeline.job;
  const sections = [
    summary(job),
    section("Cost", "timeline-cost", ["Estimated", "Final", "Unit", "Quantity", "Unit price"], [timeline.cost].filter(Boolean),
      (c) => row([money(c.estimated, c.currency), "num"], [money(c.final, c.currency), "num"], c.unit,
        [c.quantity, "num"], [money(c.unit_price, c.currency), "num"])),
    section("Events", "timeline-events", ["#", "At", "Status", "Version", "Queue", "Logs", "Error"], timeline.events,
      (e) => row([e.id, "num"], when(e.at), badge(e.status), [e.version, "num"], [e.queue_position, "num"],
        [e.logs, "num"], e.error)),
    section("Log lines", "timeline-logs", ["At", "Level", "Message"], job.logs || [],
      (line) => row(line.timestamp ? when(line.timestamp) : "—", line.level, line.message)),
    section("Deliveries (webhooks, polls, sweeps)", "timeline-deliveries",
      ["Received", "Source", "Outcome", "fal status", "Reason", "Took"], timeline.deliveries,
      (d) => row(when(d.received_at), d.source, el("span", { class: "outcome", dataset: { outcome: d.outcome } }, d.outcome),
        d.status, d.reason, [`${(d.duration_us / 1000).toFixed(1)} ms`, "num"])),
    section("Output copies", "timeline-outputs", ["#", "Kind", "Status", "Attempts", "Size", "Updated", "Last error"],
      timeline.outputs,
      (o) => row([o.index, "num"], o.kind, o.status, [o.attempts, "num"], [o.size === null ? null : bytes(o.size), "num"],
        when(o.updated_at), o.last_error)),
  ];
  return sections;
}

function summary(job) {
  const facts = [
    ["Request id", el("code", {}, job.request_id)],
    ["User", job.user_name ?? job.user_id],
    ["Model", job.model_id],
    ["Status", badge(job.status)],
    ["Created", when(job.created_at)],
    ["Completed", when(job.completed_at)],
    ["Tags", (job.tags || []).join(", ") || "—"],
    ["Prompt", String(job.input?.prompt ?? "—")],
  ];
  if (job.error) facts.push(["Error", el("span", { class: "error-text" }, job.error)]);
  return el("dl", { class: "facts", "data-testid": "timeline-summary" },
    ...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

function section(title, testid, headings, items, toRow) {
  const body = items.length
    ? el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...items.map(toRow))))
    : el("p", { class: "muted" }, "None.");
  return el("section", { class: "timeline-part", "data-testid": testid }, el("h3", {}, title), body);
}

export function badge(status) {
  return el("span", { class: "badge", dataset: { status } }, status);
}

function bytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}
