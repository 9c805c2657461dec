// System: /readyz, the nodes (/api/nodes), the routers (/api/routers) and the elected leaders
// (/api/leaders), live: the routers' and leaders' keys are under system/, which the page-wide
// stream leaves out, so this page follows a stream of its own for them.

import { authHeaders, list } from "../api.js";
import { fill, h, table, when } from "../dom.js";
import { EventStream, keys } from "../events.js";

async function readiness(signal) {
  // 503 is an answer here (not ready yet), not a failure: read the body either way
  const resp = await fetch("/readyz", { headers: authHeaders(), signal, cache: "no-store" });
  return { code: resp.status, body: await resp.json() };
}

export async function render(ctx, view) {
  const ready = h("div", { class: "card", role: "group", "aria-label": "Readiness" });
  const nodes = table("Nodes", [
    ["Name", (n) => n.name],
    ["State", (n) => h("span", { class: `state state-${n.state}` }, n.state)],
    ["Host", (n) => n.hostname || ""],
    ["CPUs", (n) => (n.cpus ?? "") + ""],
    ["Memory", (n) => (n.memory ? `${n.memory} MB` : "")],
    ["Docker", (n) => n.docker_version || ""],
    ["Pods", (n) => String(n.pods)],
    ["Updated", (n) => when(n.updated)],
  ], "No nodes: start a node agent (lastbackend node).");
  const routers = table("Routers", [
    ["Name", (r) => r.name],
    ["HTTP", (r) => h("code", {}, r.http)],
    ["HTTPS", (r) => h("code", {}, r.https)],
    ["Hosts", (r) => String(r.routes)],
    ["Revision", (r) => String(r.revision)],
    ["Loaded", (r) => (r.applied_at ? when(r.applied_at) : "")],
    ["Error", (r) => r.error || ""],
  ], "No router: apps are not reachable at their URLs (start lastbackend router).");
  const leaders = table("Leaders", [
    ["Elected", (c) => c.name],
    ["Leader", (c) => h("code", {}, c.leader)],
    ["Since revision", (c) => String(c.since_revision)],
    ["This API process", (c) => (c.here ? `runs it${c.here.ready ? ", synced" : ", syncing"}` : "")],
  ], "No leader: no controller or node agent runs now.");
  let here = {}; // the controllers this process runs, from /readyz

  const refreshReady = async () => {
    const { code, body } = await readiness(ctx.signal);
    const rows = [h("dt", {}, "/readyz"), h("dd", {}, h("strong", { class: `state state-${body.status}` }, body.status), ` (HTTP ${code})`)];
    if (body.etcd) rows.push(h("dt", {}, "etcd"), h("dd", {}, typeof body.etcd === "object" ? `revision ${body.etcd.revision}` : String(body.etcd)));
    if (body.router) rows.push(h("dt", {}, "Router"), h("dd", {}, `${body.router.ready ? "serving" : "not serving"}, ${body.router.routes ?? 0} routes${body.router.error ? ` — ${body.router.error}` : ""}`));
    ready.replaceChildren(h("h2", {}, "Readiness"), h("dl", { class: "summary" }, rows));
    here = body.controllers || {};
  };
  const refreshLeaders = async () => {
    const found = await list("/api/leaders", { signal: ctx.signal });
    leaders.update(found.map((l) => ({ ...l, here: here[l.name] && here[l.name].leading ? here[l.name] : null })));
  };
  const refreshNodes = async () => nodes.update(await list("/api/nodes", { signal: ctx.signal }));
  const refreshRouters = async () => routers.update(await list("/api/routers", { signal: ctx.signal }));
  ctx.live((key) => key.startsWith(keys.nodes) || key.startsWith(keys.pods), async () => {
    await Promise.all([refreshNodes(), refreshReady()]);
  });
  const system = new EventStream(null, "system/");
  ctx.onLeave(() => system.stop());
  let timer = null;
  let routerTimer = null;
  ctx.onLeave(system.subscribe((event) => {
    if (event === null || event.key.startsWith(keys.routers)) {
      // a busy tree rewrites a router's key up to 5 times a second: one refresh per second
      routerTimer ??= setTimeout(() => { routerTimer = null; refreshRouters().catch(() => {}); }, 1000);
    }
    if (event !== null && !event.key.startsWith(keys.leaders)) return;
    clearTimeout(timer);
    timer = setTimeout(() => refreshReady().then(refreshLeaders).catch(() => {}), 60);
  }));
  ctx.onLeave(() => { clearTimeout(timer); clearTimeout(routerTimer); });
  fill(view, h("h1", {}, "System"), ready, h("h2", {}, "Nodes"), nodes, h("h2", {}, "Routers"), routers,
    h("h2", {}, "Leaders"), leaders);
  system.start(); // before the lists: what changes while they load is streamed, not lost
  await Promise.race([system.opened, new Promise((done) => setTimeout(done, 3000))]);
  await Promise.all([refreshReady(), refreshNodes(), refreshRouters()]);
  await refreshLeaders();
}
