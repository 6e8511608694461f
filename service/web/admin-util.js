// Small helpers the operator's console shares: DOM building, GETs on the session cookie, formats.

import { $, el, money, requestJson } from "/static/dom.js";

export { $, ApiError, el, money } from "/static/dom.js";

/** A GET on the browser session (the console only reads; nothing here needs the CSRF token). */
export function get(path) {
  return requestJson(path, { headers: { Accept: "application/json" } });
}

/** A table row of cells; a cell given as [text, "num"] is right-aligned. */
export function row(...cells) {
  return el("tr", {}, ...cells.map((cell) => {
    const [content, cls] = Array.isArray(cell) ? cell : [cell, ""];
    return el("td", cls ? { class: cls } : {}, content ?? "—");
  }));
}

/** A job's cost as the list shows it: the final one, else "≈ estimate", else a dash. */
export function costText(cost) {
  if (!cost) return "—";
  if (cost.final !== null && cost.final !== undefined) return money(cost.final, cost.currency);
  if (cost.estimated !== null && cost.estimated !== undefined) return `≈ ${money(cost.estimated, cost.currency)}`;
  return "—";
}

const TIME = new Intl.DateTimeFormat("en-GB", {
  year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : TIME.format(date);
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 10) return `${value.toFixed(2)} s`;
  if (value < 120) return `${value.toFixed(1)} s`;
  return `${(value / 60).toFixed(1)} min`;
}

export function percent(value) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`;
}

export function showError(message) {
  const box = $('[data-testid="console-error"]');
  box.textContent = message || "";
  box.hidden = !message;
}
