// A project: its services (run from an image) and its apps (staged from packages), live, and
// forms to create either.

import { del, enc, get, list, post } from "../api.js";
import { action, fill, form, h, link, table } from "../dom.js";
import { keys } from "../events.js";

/** What the lists show changes with these keys of a service (and the project's meta). */
const PARTS = /\/(meta|config|status|image|app|domains|source)$/;

export function rollout(service) {
  const r = service.status && service.status.rollout;
  const desired = service.config ? service.config.replicas : 0;
  if (!r) return { state: desired === 0 ? "stopped" : "—", ready: `0/${desired}`, reason: "" };
  return { state: r.state, ready: `${r.ready}/${r.desired}`, reason: r.reason || "" };
}

export function urls(list) {
  return h("ul", { class: "plain" }, (list || []).map((u) => h("li", {}, link(u))));
}

/** The droplet an app runs: its image is lastbackend-droplets/<app>:<droplet guid>. */
export function dropletOf(image) {
  if (!image) return "none";
  const m = image.match(/^lastbackend-droplets\/[^:]+:(.+)$/);
  return m ? m[1] : image;
}

export async function render(ctx, view, name) {
  const project = await get(`/api/projects/${enc(name)}`, { signal: ctx.signal });
  const base = `/api/projects/${enc(project.id)}`;
  const services = table("Services", [
    ["Name", (s) => h("a", { href: `#/projects/${enc(project.name)}/services/${enc(s.name)}` }, s.name)],
    ["State", (s) => h("span", { class: `state state-${rollout(s).state}`, title: rollout(s).reason }, rollout(s).state)],
    ["Ready", (s) => rollout(s).ready],
    ["Image", (s) => h("code", {}, s.image || s.config.image || "—")],
    ["Rollout", (s) => rollout(s).reason],
    ["URLs", (s) => urls(s.urls)],
  ], "No services yet.");
  const apps = table("Apps", [
    ["Name", (a) => h("a", { href: `#/apps/${enc(a.guid)}` }, a.name)],
    ["State", (a) => a.desired_state],
    ["Ready", (a) => (a.service ? rollout(a.service).ready : "—")],
    ["Droplet", (a) => h("code", {}, dropletOf(a.service && a.service.image))],
    ["Rollout", (a) => (a.service ? rollout(a.service).reason : "")],
    ["URLs", (a) => urls(a.urls)],
  ], "No apps yet.");

  const refresh = async () => {
    const [all, found] = await Promise.all([
      list(`${base}/services`, { signal: ctx.signal }),
      list(`/v3/apps?space_guids=${enc(project.id)}`, { signal: ctx.signal }),
    ]);
    // Every app is a service: one run from an image (or built from git) is listed as a service,
    // one staged from packages as an app.
    const byId = new Map(all.map((s) => [s.id, s]));
    const isApp = (s) => !s.config.image && !s.source;
    services.update(all.filter((s) => !isApp(s)));
    apps.update(found.filter((a) => byId.has(a.guid) && isApp(byId.get(a.guid))).map((a) => ({ ...a, service: byId.get(a.guid) })));
  };
  const prefix = keys.project(project.id);
  ctx.live((key) => key.startsWith(prefix) && PARTS.test(key), refresh);

  fill(view,
    h("p", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / "),
    h("h1", {}, project.name),
    project.description ? h("p", {}, project.description) : null,
    ctx.canWrite
      ? h("div", { class: "actions" }, action("Delete project", async () => {
        if (!confirm(`Delete project ${project.name} with all its services, apps and containers?`)) return;
        await del(base);
        location.hash = "#/projects";
      }, ctx.alert, { class: "danger" }))
      : null,
    h("h2", {}, "Services"),
    services,
    h("h2", {}, "Apps"),
    apps,
    ctx.canWrite
      ? h("div", { class: "forms" },
        form("New service", [
          { name: "name", label: "Name", api: ["name"] },
          { name: "image", label: "Image", api: ["config.image", "image"], hint: "e.g. busybox:1.36" },
          { name: "replicas", label: "Replicas", type: "number", value: "1", api: ["config.replicas"] },
          { name: "memory", label: "Memory (MB)", type: "number", value: "128", api: ["config.memory"] },
          { name: "port", label: "Port", api: ["config.ports"], hint: "optional: 8080/TCP is published on a free host port" },
          { name: "command", label: "Command", api: ["config.command"], hint: "optional: run with /bin/sh -c" },
        ], "Create service", async (v) => {
          const config = {
            image: v.image.trim(),
            replicas: number(v.replicas),
            memory: number(v.memory),
            command: v.command,
          };
          if (v.port.trim()) config.ports = { [port(v.port)]: 0 };
          const made = await post(`${base}/services`, { name: v.name.trim(), config });
          return `Created ${made.name}.`;
        }),
        form("New app", [
          { name: "app", label: "App", api: ["name"], hint: "its name; then upload a zip on its page" },
        ], "Create app", async (v) => {
          const made = await post("/v3/apps", { name: v.app.trim(), relationships: { space: { guid: project.id } } });
          location.hash = `#/apps/${enc(made.guid)}`;
          return `Created ${made.name}.`;
        }))
      : null,
  );
  await refresh();
}

/** A form's number as the API should judge it: "" stays a string so the 422 says why. */
export function number(raw) {
  const text = String(raw).trim();
  return /^-?\d+$/.test(text) ? Number(text) : text;
}

export function port(raw) {
  const text = raw.trim();
  return /^\d+$/.test(text) ? `${text}/TCP` : text;
}
