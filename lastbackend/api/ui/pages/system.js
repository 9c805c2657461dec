// System: /readyz, the nodes (/api/nodes) and the controllers' leaders (from /readyz).

import { authHeaders, list } from "../api.js";
import { fill, h, table, when } from "../dom.js";
import { keys } from "../events.js";

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
  const leaders = table("Leaders", [
    ["Controller", (c) => c.name],
    ["Leader", (c) => h("code", {}, c.leader || "—")],
    ["Here", (c) => (c.leading ? "this process" : "elsewhere")],
    ["Ready", (c) => (c.ready ? "yes" : "no")],
  ], "This API process runs no controllers: their leaders are in the processes that do.");

  const refreshReady = async () => {
    const { code, body } = await readiness(ctx.signal);
    const rows = [h("dt", {}, "/readyz"), h("dd", {}, h("strong", { class: `state state-${body.status}` }, body.status), ` (HTTP ${code})`)];
    if (body.etcd) rows.push(h("dt", {}, "etcd"), h("dd", {}, typeof body.etcd === "object" ? `revision ${body.etcd.revision}` : String(body.etcd)));
    if (body.router) rows.push(h("dt", {}, "Router"), h("dd", {}, `${body.router.ready ? "serving" : "not serving"}, ${body.router.routes ?? 0} routes${body.router.error ? ` — ${body.router.error}` : ""}`));
    ready.replaceChildren(h("h2", {}, "Readiness"), h("dl", { class: "summary" }, rows));
    leaders.update(Object.entries(body.controllers || {}).map(([name, c]) => ({ name, ...c })));
  };
  const refreshNodes = async () => nodes.update(await list("/api/nodes", { signal: ctx.signal }));
  ctx.live((key) => key.startsWith(keys.nodes) || key.startsWith(keys.pods), async () => {
    await Promise.all([refreshNodes(), refreshReady()]);
  });
  fill(view, h("h1", {}, "System"), ready, h("h2", {}, "Nodes"), nodes, h("h2", {}, "Leaders"), leaders);
  await Promise.all([refreshReady(), refreshNodes()]);
}
