// The API client: every request carries the tab's token as a bearer header (never a cookie),
// and every refusal becomes an ApiError holding the API's own messages.

const KEY = "lastbackend.token";

export const session = {
  get token() {
    return sessionStorage.getItem(KEY) || "";
  },
  set token(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

/** A refusal: `status` and the `errors` of the API's one error shape. */
export class ApiError extends Error {
  constructor(status, errors) {
    super(errors.map((e) => e.detail || e.title).join("; ") || `HTTP ${status}`);
    this.status = status;
    this.errors = errors;
  }

  /** Each error as [field path, message]: the API writes details as "config.replicas: ...". */
  fields() {
    return this.errors.map((e) => {
      const detail = e.detail || e.title || "";
      const cut = detail.indexOf(": ");
      return cut > 0 ? [detail.slice(0, cut), detail] : ["", detail];
    });
  }
}

const listeners = new Set();

/** Called with every 401: the token was revoked or the API restarted with others. */
export function onUnauthorized(fn) {
  listeners.add(fn);
}

export function notifyUnauthorized(error) {
  for (const fn of listeners) fn(error);
}

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (session.token && !headers.Authorization) headers.Authorization = `Bearer ${session.token}`;
  return headers;
}

export async function errorOf(resp) {
  let errors = [];
  try {
    errors = (await resp.json()).errors || [];
  } catch {
    // not the API's error shape: say what we know
  }
  if (!errors.length) errors = [{ detail: `${resp.status} ${resp.statusText}` }];
  return new ApiError(resp.status, errors);
}

async function checked(resp, quiet) {
  if (resp.ok) return resp;
  const error = await errorOf(resp);
  if (resp.status === 401 && !quiet) notifyUnauthorized(error);
  throw error;
}

/** One call: JSON in (`body`) or a FormData (`form`), the decoded answer out. */
export async function request(method, path, { body, form, signal, headers, quiet } = {}) {
  const init = { method, headers: authHeaders(headers), signal, cache: "no-store" };
  if (form !== undefined) init.body = form;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await checked(await fetch(path, init), quiet);
  if (resp.status === 204) return null;
  const type = resp.headers.get("Content-Type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, body, options) => request("POST", path, { ...options, body });
export const put = (path, body, options) => request("PUT", path, { ...options, body });
export const patch = (path, body, options) => request("PATCH", path, { ...options, body });
export const del = (path, options) => request("DELETE", path, options);

/** Every item of a paginated list: pages of 5,000 (the API's maximum), following `next`. */
export async function list(path, options) {
  const sep = path.includes("?") ? "&" : "?";
  let url = `${path}${sep}per_page=5000`;
  const items = [];
  for (;;) {
    const page = await get(url, options);
    items.push(...page.resources);
    const next = page.pagination && page.pagination.next;
    if (!next) return items;
    const found = new URL(next.href, location.href); // same origin: only its path is used
    url = `${found.pathname}${found.search}`;
  }
}

/** A text stream (a followed log): `onText` gets each piece as it arrives, until it ends. */
export async function follow(path, onText, signal) {
  const resp = await checked(await fetch(path, { headers: authHeaders(), signal, cache: "no-store" }));
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onText(value);
  }
}

export const enc = encodeURIComponent;
