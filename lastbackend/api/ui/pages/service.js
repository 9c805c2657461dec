// A service: its containers, logs followed live, builds with their logs, the config form and
// rollback to a revision. Everything below the heading follows the event stream.

import { ApiError, del, enc, follow, get, list, post, put } from "../api.js";
import { action, fill, form, h, logView, table, when } from "../dom.js";
import { keys } from "../events.js";
import { number, rollout, urls } from "./project.js";

export async function render(ctx, view, projectName, name) {
  // The first requests go out together, by names (the API takes names or ids); the service's
  // answer names the ids that every later request and the event keys use.
  const named = `/api/projects/${enc(projectName)}/services/${enc(name)}`;
  const opts = { signal: ctx.signal };
  const firstLists = Promise.all([
    list(`${named}/containers`, opts),
    list(`${named}/builds?order_by=-number`, opts),
    list(`${named}/revisions`, opts),
  ]);
  firstLists.catch(() => {}); // a failure is the service's 404, reported by its own request
  const first = await get(named, opts);
  const project = { id: first.project, name: projectName };
  const base = `/api/projects/${enc(project.id)}/services/${enc(first.id)}`;
  const prefix = keys.service(project.id, first.id);
  let service = first;

  const summary = h("dl", { class: "summary" });
  const showSummary = () => {
    const r = rollout(service);
    summary.replaceChildren(
      h("dt", {}, "Image"), h("dd", {}, h("code", {}, service.image || "—")),
      h("dt", {}, "Rollout"), h("dd", {}, h("span", { class: `state state-${r.state}` }, r.state), ` ${r.ready} ready`, r.reason ? ` — ${r.reason}` : ""),
      h("dt", {}, "URLs"), h("dd", {}, urls(service.urls)),
    );
  };

  const containers = table("Containers", [
    ["Container", (c) => h("code", { title: c.id }, c.id.slice(0, 12))],
    ["Node", (c) => c.node || "—"],
    ["Status", (c) => [c.status, c.reason ? ` (${c.reason})` : ""]],
    ["Ready", (c) => (c.ready ? "yes" : "no")],
    ["Restarts", (c) => String(c.restarts ?? 0)],
    ["Ports", (c) => Object.entries(c.ports || {}).map(([p, hp]) => `${p} → ${c.host || ""}:${hp}`).join(", ") || "—"],
    ["Started", (c) => when(c.started)],
  ], "No containers yet.");

  // logs: one followed request for the running containers, started again when they change
  const logs = logView("Logs");
  let following = "";
  let logAbort = null;
  const followLogs = (running) => {
    const ids = running.map((c) => c.id).sort().join(",");
    if (ids === following) return;
    following = ids;
    if (logAbort) logAbort.abort();
    logs.reset(running.length ? "" : "(no running containers)\n");
    if (!running.length) return;
    logAbort = new AbortController();
    ctx.signal.addEventListener("abort", () => logAbort.abort());
    const mine = logAbort;
    follow(`${base}/logs?follow=true&tail=100`, (text) => logs.write(text), mine.signal)
      .then(() => logs.flush())
      .catch((error) => {
        if (!mine.signal.aborted) logs.write(`-- ${error.message}\n`);
      });
  };

  const builds = table("Builds", [
    ["Build", (b) => `#${b.number}`],
    ["Status", (b) => b.status],
    ["Commit", (b) => h("code", {}, (b.commit && b.commit.hash ? b.commit.hash : String(b.commit || "")).slice(0, 12))],
    ["Message", (b) => b.commitMessage || b.message || ""],
    ["Created", (b) => when(b.created)],
    ["Log", (b) => h("button", { type: "button", "aria-label": `Log of build ${b.number}`, onclick: () => showBuild(b.number) }, "Log")],
  ], "No builds: a service with a git source builds on each push.");
  const buildLog = logView("Build log");
  const buildTitle = h("h3", {}, "Build log");
  buildLog.hidden = true; // until a build's Log button is pressed
  buildTitle.hidden = true;
  let buildAbort = null;
  const showBuild = (n) => {
    if (buildAbort) buildAbort.abort();
    buildAbort = new AbortController();
    ctx.signal.addEventListener("abort", () => buildAbort.abort());
    const mine = buildAbort;
    buildTitle.textContent = `Build log: #${n}`;
    buildTitle.hidden = false;
    buildLog.hidden = false;
    buildLog.reset();
    follow(`${base}/builds/${n}/logs?follow=true`, (t) => buildLog.write(t), mine.signal)
      .then(() => buildLog.flush())
      .catch((error) => {
        if (!mine.signal.aborted) buildLog.write(`-- ${error.message}\n`);
      });
  };

  const revisions = h("select", { id: "rollback-revision" });
  const rollbackAlert = ctx.alert;
  const rollbackBox = h("div", { class: "card", role: "group", "aria-label": "Rollback" },
    h("h2", {}, "Rollback"),
    h("div", { class: "field" }, h("label", { for: "rollback-revision" }, "Revision"), revisions),
    ctx.canWrite
      ? h("div", { class: "actions" }, action("Rollback", async () => {
        const body = revisions.value ? { revision: Number(revisions.value) } : {};
        service = await post(`${base}/rollback`, body);
        showSummary();
      }, rollbackAlert))
      : null,
  );
  const showRevisions = (items) => {
    const current = service.status && service.status.rollout ? service.status.rollout.revision : null;
    revisions.replaceChildren(...items.map((r) => h("option", { value: String(r.revision) },
      `${r.revision}${r.revision === current ? " (current)" : ""}: ${r.spec.image || "no image"}, ${when(r.created)}`)));
    const older = items.find((r) => current === null || r.revision < current);
    if (older) revisions.value = String(older.revision);
  };

  const refreshService = async () => {
    service = await get(base, { signal: ctx.signal });
    showSummary();
  };
  const refreshContainers = async (given) => {
    const items = given || (await list(`${base}/containers`, { signal: ctx.signal }));
    items.sort((a, b) => String(a.created).localeCompare(String(b.created)) || a.id.localeCompare(b.id));
    containers.update(items);
    followLogs(items.filter((c) => c.status === "running"));
  };
  const refreshBuilds = async (given) => builds.update(given || (await list(`${base}/builds?order_by=-number`, { signal: ctx.signal })));
  const refreshRevisions = async (given) => showRevisions(given || (await list(`${base}/revisions`, { signal: ctx.signal })));

  ctx.live((key) => key.startsWith(`${prefix}containers/`), refreshContainers);
  ctx.live((key) => key.startsWith(`${prefix}builds/`), refreshBuilds);
  ctx.live((key) => key.startsWith(`${prefix}revisions/`) || key === `${prefix}status`, refreshRevisions);
  ctx.live((key) => key.startsWith(prefix) && /\/(meta|config|status|image|domains|source)$/.test(key), refreshService);

  showSummary();
  fill(view,
    h("p", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / ",
      h("a", { href: `#/projects/${enc(project.name)}` }, project.name), " / "),
    h("h1", {}, service.name),
    summary,
    ctx.canWrite
      ? h("div", { class: "actions" }, action("Delete service", async () => {
        if (!confirm(`Delete service ${service.name} with its containers and builds?`)) return;
        await del(base);
        location.hash = `#/projects/${enc(project.name)}`;
      }, ctx.alert, { class: "danger" }))
      : null,
    h("h2", {}, "Containers"),
    containers,
    h("h2", {}, "Logs"),
    logs,
    h("h2", {}, "Builds"),
    builds,
    buildTitle,
    buildLog,
    h("div", { class: "forms" }, ctx.canWrite ? configForm(ctx, base, () => service) : configView(service), rollbackBox),
  );
  const [found, built, deployed] = await firstLists;
  await Promise.all([refreshContainers(found), refreshBuilds(built), refreshRevisions(deployed)]);
}

const lines = (text) => text.split(/[\n,]/).map((l) => l.trim()).filter(Boolean);

function envText(env) {
  return Object.entries(env || {}).map(([k, v]) => `${k}=${v}`).join("\n");
}

function portsText(ports) {
  return Object.entries(ports || {}).map(([p, hp]) => (hp ? `${p}=${hp}` : p)).join("\n");
}

function parseEnv(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const cut = line.indexOf("=");
    if (cut < 0) out[line.trim()] = "";
    else out[line.slice(0, cut).trim()] = line.slice(cut + 1);
  }
  return out;
}

function parsePorts(text) {
  const out = {};
  for (const item of lines(text)) {
    const [spec, host] = item.split("=");
    const name = /^\d+$/.test(spec.trim()) ? `${spec.trim()}/TCP` : spec.trim();
    out[name] = host === undefined ? 0 : number(host);
  }
  return out;
}

/** The health check as one line: "" (the default), "port", "process" or "http <path>". */
function checkOf(text, endpoint) {
  const type = text.trim();
  if (!type) return null;
  if (type === "http") return { type, data: { endpoint: endpoint.trim() || "/" } };
  return { type };
}

function configForm(ctx, base, current) {
  const config = current().config; // the service's answer carries its config
  const check = config.health_check;
  const el = form("Config", [
    { name: "replicas", label: "Replicas", type: "number", value: String(config.replicas), api: ["replicas", "config.replicas"] },
    { name: "memory", label: "Memory", type: "number", value: String(config.memory), api: ["memory", "config.memory"], hint: "MB" },
    { name: "command", label: "Command", value: config.command, api: ["command", "config.command"], hint: "run with /bin/sh -c; empty: the image's own" },
    { name: "env", label: "Env", rows: 4, value: envText(config.env), api: ["env", "config.env"], hint: "NAME=value, one a line" },
    { name: "ports", label: "Ports", rows: 2, value: portsText(config.ports), api: ["ports", "config.ports"], hint: "8080/TCP (a free host port) or 8080/TCP=30080, one a line" },
    { name: "domains", label: "Domains", rows: 2, value: Object.keys(current().domains || {}).join("\n"), api: ["domains"], hint: "host names routed to it, one a line" },
    {
      name: "check", label: "Health check", value: check ? check.type : "", api: ["health_check.type", "health_check"],
      options: [["", "default (port if one is published)"], ["port", "port: a TCP connect"], ["http", "http: GET an endpoint"], ["process", "process: it runs"]],
    },
    { name: "endpoint", label: "Endpoint", value: check && check.data && check.data.endpoint ? check.data.endpoint : "/", api: ["health_check.data"], hint: "the path an http check asks" },
  ], "Save config", async (v) => {
    const latest = await get(`${base}/config`, { signal: ctx.signal });
    const body = {
      ...latest,
      replicas: number(v.replicas),
      memory: number(v.memory),
      command: v.command,
      env: parseEnv(v.env),
      ports: parsePorts(v.ports),
      health_check: checkOf(v.check, v.endpoint),
    };
    await put(`${base}/config`, body);
    const wanted = Object.fromEntries(lines(v.domains).map((d) => [d, true]));
    const had = current().domains || {};
    const same = Object.keys(wanted).length === Object.keys(had).length && Object.keys(wanted).every((d) => d in had);
    if (!same) {
      try {
        await put(`${base}/domains`, wanted);
      } catch (error) {
        if (error.status !== 422) throw error;
        throw new ApiError(422, error.errors.map((e) => ({ ...e, detail: `domains: ${e.detail}` })));
      }
    }
    return "Saved: the new config rolls out one container at a time.";
  }, { reset: false });
  return el;
}

function configView(service) {
  const c = service.config;
  const row = (name, value) => [h("dt", {}, name), h("dd", {}, value)];
  return h("section", { class: "card", "aria-label": "Config" },
    h("h2", {}, "Config"),
    h("dl", { class: "summary" },
      row("Replicas", String(c.replicas)),
      row("Memory", `${c.memory} MB`),
      row("Command", h("code", {}, c.command || "—")),
      row("Env", envText(c.env) || "—"),
      row("Ports", portsText(c.ports) || "—"),
      row("Domains", Object.keys(service.domains || {}).join(", ") || "—"),
      row("Health check", c.health_check ? c.health_check.type : "default")));
}
