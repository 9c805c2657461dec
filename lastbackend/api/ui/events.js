// The live event stream: /api/events read with fetch() (EventSource cannot send the bearer
// header), parsed as server-sent events, resumed with Last-Event-ID after a drop.

import { authHeaders, errorOf, notifyUnauthorized } from "./api.js";

export const ROOT = "/lastbackend/";
/** Key prefixes of the tree (docs/keytree.md): the pages match events against these. */
export const keys = {
  projects: `${ROOT}projects/`,
  project: (pid) => `${ROOT}projects/${pid}/`,
  service: (pid, sid) => `${ROOT}projects/${pid}/services/${sid}/`,
  vendors: `${ROOT}vendors/`,
  registries: `${ROOT}registries/`,
  repos: `${ROOT}repos/`,
  nodes: `${ROOT}nodes/`,
  pods: `${ROOT}pods/`,
  leaders: `${ROOT}system/leader/`,
  routers: `${ROOT}system/routers/`,
};

const HEARTBEAT = 10; // seconds between the server's heartbeats
const SILENT = (HEARTBEAT * 2 + 5) * 1000; // no byte for this long: the connection is dead
const BACKOFF_MIN = 250;
const BACKOFF_MAX = 8000;

/**
 * One followed stream. The page-wide one has the header's indicator and no prefix (every key
 * but `system/`, which the server leaves out unless asked); a page may open one of its own
 * with a prefix (the System page: `system/`, for the leaders).
 */
export class EventStream {
  constructor(indicator, prefix = "") {
    this.indicator = indicator;
    this.prefix = prefix;
    this.listeners = new Set();
    this.lastId = "";
    this.running = false;
    this.wasLive = false;
    this.generation = 0; // each start's loop runs only while it is the latest
    // Settled once the server answered: it streams every change after the revision it read
    // then, so a page that lists after this misses nothing between its list and the stream.
    this.opened = new Promise((done) => { this.markOpened = done; });
  }

  /** `fn(event)` for each change; `fn(null)` when everything must be listed again. */
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.loop(++this.generation);
  }

  stop() {
    this.running = false;
    this.lastId = ""; // a later start (another sign-in) begins from then, not from here
    this.wasLive = false;
    if (this.abort) this.abort.abort();
    this.setState("connecting");
  }

  setState(state) {
    if (!this.indicator) return;
    this.indicator.dataset.state = state;
    this.indicator.querySelector(".text").textContent = state;
    this.indicator.title = `Event stream: ${state}`;
  }

  emit(event) {
    for (const fn of [...this.listeners]) {
      try {
        fn(event);
      } catch (error) {
        console.error(error);
      }
    }
  }

  async loop(generation) {
    let delay = BACKOFF_MIN;
    const current = () => this.running && this.generation === generation;
    while (current()) {
      this.setState(this.wasLive ? "reconnecting" : "connecting");
      this.abort = new AbortController();
      let opened = false;
      try {
        const headers = authHeaders();
        if (this.lastId) headers["Last-Event-ID"] = this.lastId;
        const query = `heartbeat=${HEARTBEAT}${this.prefix ? `&prefix=${encodeURIComponent(this.prefix)}` : ""}`;
        const resp = await fetch(`/api/events?${query}`, {
          headers,
          signal: this.abort.signal,
          cache: "no-store",
        });
        if (resp.status === 401) {
          notifyUnauthorized(await errorOf(resp)); // the token was revoked: sign in again
          return;
        }
        if (!resp.ok) throw await errorOf(resp);
        opened = true;
        this.markOpened();
        this.setState("live");
        if (this.wasLive && !this.lastId) this.emit(null); // a fresh stream: list again
        this.wasLive = true;
        await this.read(resp.body);
      } catch (error) {
        if (!current()) return;
        if (error.status === 400 && this.lastId) this.lastId = ""; // an id it no longer takes
      }
      if (!current()) return;
      delay = opened ? BACKOFF_MIN : Math.min(delay * 2, BACKOFF_MAX);
      this.setState("reconnecting");
      await new Promise((done) => setTimeout(done, delay * (0.75 + Math.random() / 2)));
    }
  }

  /** Parse text/event-stream: `field: value` lines, a blank line ends an event. */
  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = { id: null, type: "message", data: [] };
    let timer = setTimeout(() => this.abort.abort(), SILENT);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(timer);
        timer = setTimeout(() => this.abort.abort(), SILENT);
        buffer += value;
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (event.data.length) this.dispatch(event);
            event = { id: null, type: "message", data: [] };
            continue;
          }
          if (line.startsWith(":")) continue; // a heartbeat comment
          const cut = line.indexOf(":");
          const field = cut < 0 ? line : line.slice(0, cut);
          const text = cut < 0 ? "" : line.slice(cut + 1).replace(/^ /, "");
          if (field === "id") event.id = text;
          else if (field === "event") event.type = text;
          else if (field === "data") event.data.push(text);
        }
      }
    } finally {
      clearTimeout(timer);
    }
  }

  dispatch(event) {
    if (event.id !== null) this.lastId = event.id;
    let data;
    try {
      data = JSON.parse(event.data.join("\n"));
    } catch {
      return;
    }
    if (event.type === "relist") {
      // history is gone: the stream ends; start again from now and let every page list again
      this.lastId = "";
      this.emit(null);
    } else if (event.type === "created" || event.type === "updated" || event.type === "deleted") {
      this.emit(data);
    }
  }
}
