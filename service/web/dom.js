// What the user's page (app.js) and the operator's console (admin*.js) both need: building DOM from
// text nodes only (no HTML strings: what users wrote is never parsed as markup), JSON over fetch with
// one error shape, and money as the browser's locale writes it.

export const $ = (selector, root = document) => root.querySelector(selector);

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** fetch, then the body as JSON (a body that is not JSON becomes {message}); ApiError unless 2xx. */
export async function requestJson(path, init) {
  const response = await fetch(path, { credentials: "same-origin", ...init });
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

/** "$0.0125"; a dash for no amount. */
export function money(amount, currency = "USD") {
  if (amount === null || amount === undefined) return "—";
  return new Intl.NumberFormat("en-US", { style: "currency", currency: currency || "USD", maximumFractionDigits: 4 })
    .format(amount);
}

const newestFirstKey = (job) => `${job.created_at}\u0000${job.request_id}`;

/** Put a job's element in `list` newest first (created_at, then request_id, as the API pages them):
 * before the first element whose job is older. `jobs` maps each element's data-request-id to its job. */
export function placeNewestFirst(list, node, job, jobs) {
  const key = newestFirstKey(job);
  for (const other of list.children) {
    const otherJob = jobs.get(other.dataset.requestId);
    if (otherJob && newestFirstKey(otherJob) < key) return list.insertBefore(node, other);
  }
  return list.appendChild(node);
}
