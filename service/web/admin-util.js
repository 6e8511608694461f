// Small helpers the operator's console shares: DOM building, GETs on the session cookie, formats.

export const $ = (selector, root = document) => root.querySelector(selector);

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** A GET on the browser session (the console only reads; nothing here needs the CSRF token). */
export async function get(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text };
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined).map((c) => (typeof c === "number" ? String(c) : c)));
  return node;
}

/** A table row of cells; a cell given as [text, "num"] is right-aligned. */
export function row(...cells) {
  return el("tr", {}, ...cells.map((cell) => {
    const [content, cls] = Array.isArray(cell) ? cell : [cell, ""];
    return el("td", cls ? { class: cls } : {}, content ?? "—");
  }));
}

export function money(amount, currency = "USD") {
  if (amount === null || amount === undefined) return "—";
  return new Intl.NumberFormat("en-US", { style: "currency", currency: currency || "USD", maximumFractionDigits: 4 })
    .format(amount);
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
