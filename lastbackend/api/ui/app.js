// The dashboard's entry: ask /api/whoami, sign in if a token is needed, then route by the
// URL's hash to one module per page; every page updates itself from the one event stream.

import { get, onUnauthorized, session } from "./api.js";
import { alertBox, h } from "./dom.js";
import { EventStream } from "./events.js";
import * as signin from "./pages/signin.js";
import * as projects from "./pages/projects.js";
import * as project from "./pages/project.js";
import * as service from "./pages/service.js";
import * as app from "./pages/app.js";
import * as vendors from "./pages/vendors.js";
import * as registries from "./pages/registries.js";
import * as repos from "./pages/repos.js";
import * as system from "./pages/system.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const readonly = document.getElementById("readonly");
const signout = document.getElementById("signout");
const stream = new EventStream(document.getElementById("live"));

const ROUTES = [
  [/^#\/projects$/, projects],
  [/^#\/projects\/([^/]+)$/, project],
  [/^#\/projects\/([^/]+)\/services\/([^/]+)$/, service],
  [/^#\/apps\/([^/]+)$/, app],
  [/^#\/vendors$/, vendors],
  [/^#\/registries$/, registries],
  [/^#\/repos$/, repos],
  [/^#\/system$/, system],
];

let role = null;
let current = null; // the page shown: {abort, cleanups}

function leave() {
  if (!current) return;
  current.abort.abort();
  for (const fn of current.cleanups) fn();
  current = null;
}

/**
 * What a page gets: the role (`canWrite`: render write controls at all), an AbortSignal
 * that ends its requests and followed logs when it is left, and `live(match, refresh)`,
 * which calls `refresh()` (coalesced) after each event whose key `match` accepts and after
 * the stream had to start again.
 *
 * Events are kept from the moment the page is entered until its first render is done
 * (`settle`), then offered to every `live` the page registered: a page learns the ids its keys
 * hold only from its first answers, and a change made while those were on their way must not
 * be lost.
 */
function context() {
  const abort = new AbortController();
  const cleanups = [];
  current = { abort, cleanups };
  const page = current;
  const alert = alertBox();
  const watchers = [];
  let early = [];
  cleanups.push(stream.subscribe((event) => {
    if (early !== null) early.push(event);
    else for (const watch of watchers) watch(event);
  }));
  return {
    role,
    canWrite: role === "admin",
    signal: abort.signal,
    alert,
    get active() {
      return current === page;
    },
    onLeave(fn) {
      cleanups.push(fn);
    },
    live(match, refresh) {
      let timer = null;
      const schedule = () => {
        if (timer === null) {
          timer = setTimeout(async () => {
            timer = null;
            if (current !== page) return;
            try {
              await refresh();
            } catch (error) {
              if (error.name !== "AbortError") alert.show(error.message);
            }
          }, 60);
        }
      };
      watchers.push((event) => {
        if (event === null || match(event.key, event)) schedule();
      });
      cleanups.push(() => clearTimeout(timer));
    },
    settle() {
      const kept = early || [];
      early = null;
      for (const event of kept) for (const watch of watchers) watch(event);
    },
  };
}

async function route(event) {
  if (role === null) return;
  const moved = Boolean(event); // a hashchange, not the first page of the visit
  const hash = location.hash || "#/projects";
  if (!location.hash) history.replaceState(null, "", "#/projects");
  leave();
  for (const link of nav.querySelectorAll("a")) {
    const here = hash === link.getAttribute("href") || hash.startsWith(`${link.getAttribute("href")}/`)
      || (link.getAttribute("href") === "#/projects" && hash.startsWith("#/apps/"));
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const ctx = context();
  for (const [pattern, page] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      const params = match.slice(1).map(decodeURIComponent);
      view.replaceChildren(ctx.alert);
      try {
        await page.render(ctx, view, ...params);
        const heading = view.querySelector("h1");
        document.title = heading ? `${heading.textContent} · lastbackend` : "lastbackend";
        if (moved) {
          view.focus({ preventScroll: true }); // a screen reader starts at the new page
          window.scrollTo(0, 0);
        }
      } catch (error) {
        if (error.name === "AbortError" || !ctx.active) return;
        ctx.alert.show(error.message);
        if (!view.querySelector("h1")) view.prepend(h("h1", {}, "Not available"));
      } finally {
        ctx.settle();
      }
      return;
    }
  }
  ctx.settle();
  view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/projects" }, "Projects")));
}

function start(found) {
  role = found;
  nav.hidden = false;
  readonly.hidden = role !== "read";
  signout.hidden = !session.token;
  stream.start(); // before the page's first lists: both go out at once
  route();
}

function showSignIn(message = "") {
  leave();
  role = null;
  stream.stop();
  nav.hidden = true;
  readonly.hidden = true;
  signout.hidden = true;
  signin.render(view, message, (found) => start(found));
}

// The skip link must not change the hash: that is the router's.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  view.focus();
});

signout.addEventListener("click", () => {
  session.token = "";
  showSignIn();
});

onUnauthorized((error) => {
  session.token = "";
  showSignIn(error.message);
});

window.addEventListener("hashchange", route);

async function boot(delay = 500) {
  let who;
  try {
    who = await get("/api/whoami", { quiet: true });
  } catch (error) {
    if (error.status === 401) {
      session.token = "";
      return showSignIn(error.message);
    }
    // not up yet, or restarting: say so and ask again
    view.replaceChildren(
      h("h1", {}, "Waiting for the API"),
      h("p", { role: "alert" }, `${error.message}; trying again in ${Math.round(delay / 1000)} s.`),
    );
    setTimeout(() => boot(Math.min(delay * 2, 8000)), delay);
    return;
  }
  if (who.role === null) return showSignIn();
  start(who.role);
}

boot();
