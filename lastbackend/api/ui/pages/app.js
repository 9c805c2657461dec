// An app (/v3): packages, droplets, the staging log followed live, start and stop, assigning a
// droplet, and a zip uploaded (dropped or chosen) and staged.

import { del, enc, follow, get, list, patch, post, request } from "../api.js";
import { action, alertBox, fill, h, logView, short, table, uid, when } from "../dom.js";
import { keys } from "../events.js";
import { rollout, urls } from "./project.js";

export async function render(ctx, view, guid) {
  // the lists are by the app's guid: they go out with the app's own request
  const firstLists = Promise.all([
    list(`/v3/apps/${enc(guid)}/packages`, { signal: ctx.signal }),
    list(`/v3/apps/${enc(guid)}/droplets`, { signal: ctx.signal }),
  ]);
  firstLists.catch(() => {}); // a failure is the app's 404, reported by its own request
  let app = await get(`/v3/apps/${enc(guid)}`, { signal: ctx.signal });
  const pid = app.relationships.space.guid;
  const project = { id: pid, name: "" }; // its name comes with the lists, for the crumbs
  const crumb = h("a", { href: "#/projects" }, "project");
  get(`/api/projects/${enc(pid)}`, { signal: ctx.signal }).then((found) => {
    project.name = found.name;
    crumb.textContent = found.name;
    crumb.href = `#/projects/${enc(found.name)}`;
  }, () => {});
  const service = `/api/projects/${enc(pid)}/services/${enc(guid)}`;
  const prefix = keys.service(pid, guid);
  let current = null; // the current droplet's guid
  let status = null; // the service, for its rollout
  let shown = []; // the droplets listed

  const summary = h("dl", { class: "summary" });
  const showSummary = () => {
    const r = status ? rollout(status) : null;
    summary.replaceChildren(
      h("dt", {}, "State"), h("dd", { class: "app-state" }, app.desired_state),
      h("dt", {}, "Droplet"), h("dd", {}, h("code", {}, current || "none")),
      h("dt", {}, "Rollout"), h("dd", {}, r ? `${r.state}, ${r.ready} ready${r.reason ? ` — ${r.reason}` : ""}` : "—"),
      h("dt", {}, "URLs"), h("dd", {}, urls(app.urls)),
    );
  };

  const packages = table("Packages", [
    ["Package", (p) => h("code", { title: p.guid }, short(p.guid))],
    ["Type", (p) => p.type],
    ["State", (p) => p.state],
    ["Detail", (p) => p.error || (p.hash && p.hash.value ? `sha1 ${p.hash.value.slice(0, 12)}` : p.image_path || p.url || "")],
    ["Created", (p) => when(p.created_at)],
  ], "No packages yet: upload a zip below.");

  const alert = ctx.alert;
  const droplets = table("Droplets", [
    ["Droplet", (d) => h("code", { title: d.guid }, short(d.guid))],
    ["State", (d) => h("span", { class: `state state-${d.state}` }, d.state)],
    ["Current", (d) => (d.guid === current ? "current" : "")],
    ["Error", (d) => d.error || ""],
    ["Created", (d) => when(d.created_at)],
    ["Actions", (d) => [
      h("button", { type: "button", "aria-label": `Staging log of ${short(d.guid)}`, onclick: () => followStaging(d.guid) }, "Log"),
      ctx.canWrite && d.state === "STAGED" && d.guid !== current
        ? action("Assign", async () => {
          await patch(`/v3/apps/${enc(guid)}/relationships/current_droplet`, { data: { guid: d.guid } });
          await refreshApp();
        }, alert, { "aria-label": `Assign droplet ${short(d.guid)}` })
        : null,
    ]],
  ], "No droplets yet.");

  const staging = logView("Staging log");
  const stagingTitle = h("h2", {}, "Staging log");
  let stagingOf = "";
  let stagingAbort = null;
  const followStaging = (droplet) => {
    if (droplet === stagingOf) return;
    stagingOf = droplet;
    if (stagingAbort) stagingAbort.abort();
    stagingAbort = new AbortController();
    ctx.signal.addEventListener("abort", () => stagingAbort.abort());
    const mine = stagingAbort;
    stagingTitle.textContent = `Staging log: ${short(droplet)}`;
    staging.reset();
    follow(`/v3/droplets/${enc(droplet)}/logs?follow=true`, (t) => staging.write(t), mine.signal)
      .then(() => staging.flush())
      .catch((error) => {
        if (!mine.signal.aborted) staging.write(`-- ${error.message}\n`);
      });
  };

  const refreshApp = async () => {
    const [found, droplet, svc] = await Promise.all([
      get(`/v3/apps/${enc(guid)}`, { signal: ctx.signal }),
      get(`/v3/apps/${enc(guid)}/relationships/current_droplet`, { signal: ctx.signal, quiet: true }).catch((e) => {
        if (e.status === 404) return null;
        throw e;
      }),
      get(service, { signal: ctx.signal }),
    ]);
    app = found;
    const was = current;
    current = droplet ? droplet.data.guid : null;
    status = svc;
    showSummary();
    if (was !== current) droplets.update(shown); // the Current column and Assign buttons
  };
  const refreshPackages = async (given) => packages.update(given || (await list(`/v3/apps/${enc(guid)}/packages`, { signal: ctx.signal })));
  const refreshDroplets = async (given) => {
    const items = given || (await list(`/v3/apps/${enc(guid)}/droplets`, { signal: ctx.signal }));
    items.reverse(); // newest first
    shown = items;
    droplets.update(items);
    if (items.length && !stagingOf) followStaging(items[0].guid);
  };

  ctx.live((key) => key.startsWith(`${prefix}packages/`), refreshPackages);
  ctx.live((key) => key.startsWith(`${prefix}droplets/`), refreshDroplets);
  ctx.live((key) => key.startsWith(prefix) && /\/(meta|config|status|image|app|domains|lifecycle)$/.test(key), refreshApp);

  const controls = ctx.canWrite
    ? h("div", { class: "actions" },
      action("Start", async () => {
        app = await post(`/v3/apps/${enc(guid)}/actions/start`);
        showSummary();
      }, alert),
      action("Stop", async () => {
        app = await post(`/v3/apps/${enc(guid)}/actions/stop`);
        showSummary();
      }, alert),
      action("Delete app", async () => {
        if (!confirm(`Delete app ${app.name} with its packages, droplets and containers?`)) return;
        await del(`/v3/apps/${enc(guid)}`);
        location.hash = project.name ? `#/projects/${enc(project.name)}` : "#/projects";
      }, alert, { class: "danger" }))
    : null;

  fill(view,
    h("p", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), " / ", crumb, " / "),
    h("h1", {}, app.name),
    summary,
    controls,
    ctx.canWrite ? uploader(ctx, guid, followStaging) : null,
    h("h2", {}, "Packages"),
    packages,
    h("h2", {}, "Droplets"),
    droplets,
    stagingTitle,
    staging,
  );
  const [pkgs, drops] = await firstLists;
  await Promise.all([refreshApp(), refreshPackages(pkgs), refreshDroplets(drops)]);
}

/** The drop zone: a zip (or tar.gz) dropped or chosen becomes a bits package, then a droplet. */
function uploader(ctx, guid, followStaging) {
  const id = uid("zip");
  const input = h("input", { id, type: "file", name: "bits", accept: ".zip,.tar,.tgz,.tar.gz,application/zip" });
  const chosen = h("p", { class: "hint", role: "status" }, "No file chosen.");
  const alert = alertBox();
  let file = null;
  const choose = (f) => {
    file = f || null;
    chosen.textContent = file ? `${file.name} (${file.size} bytes)` : "No file chosen.";
  };
  input.addEventListener("change", () => choose(input.files[0]));
  const zone = h("section", { class: "dropzone card", role: "region", "aria-label": "Upload a zip" },
    h("h2", {}, "Upload a zip"),
    h("p", {}, "Drop a zip of the app here, or choose one; it is uploaded as a package and staged."),
    h("div", { class: "field" }, h("label", { for: id }, "Zip file"), input),
    chosen,
    alert,
  );
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files.length) choose(event.dataTransfer.files[0]);
  });
  zone.append(h("div", { class: "actions" }, action("Upload and stage", async () => {
    if (!file && input.files.length) choose(input.files[0]);
    if (!file) throw new Error("Choose or drop a zip first.");
    chosen.textContent = `Uploading ${file.name}…`;
    const pkg = await post(`/v3/apps/${enc(guid)}/packages`, { type: "bits" });
    const bits = new FormData();
    bits.append("bits", file, file.name);
    await request("POST", `/v3/packages/${enc(pkg.guid)}/upload`, { form: bits });
    const droplet = await post(`/v3/packages/${enc(pkg.guid)}/droplets`);
    chosen.textContent = `Staging ${file.name}: droplet ${short(droplet.guid)}.`;
    followStaging(droplet.guid);
  }, alert)));
  return zone;
}
