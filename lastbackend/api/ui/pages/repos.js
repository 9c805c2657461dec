// Build tags: repos, their branches, tags and artifacts (seed 003), from /api/data, live.

import { get } from "../api.js";
import { fill, h, link, table } from "../dom.js";
import { keys } from "../events.js";

function artifact(id, a) {
  const where = a.url || a.repository_url || a.registry_url || "";
  const what = a.type === "maven" ? `${a.group_id}:${a.artifact_id}:${a.version}`
    : a.type === "rpm" ? `${a.name}-${a.version}-${a.release}`
      : a.type === "container" ? `${a.repository}@${a.image_id}` : "";
  return h("li", {}, h("code", {}, id), ` (${a.type}) `, what, where ? [" ", link(where)] : null);
}

export async function render(ctx, view) {
  const repos = table("Repos", [
    ["Repo", (r) => h("code", {}, r.id)],
    ["Source", (r) => (r.source_url ? link(r.source_url) : "")],
    ["Branches", (r) => String(Object.keys(r.branches || {}).length)],
  ], "No repos yet: CI records them with PUT /api/repos/<repo>.");
  const tags = table("Tags", [
    ["Repo", (t) => t.repo],
    ["Branch", (t) => [t.branch, " ", t.job_url ? link(t.job_url, "job") : ""]],
    ["Tag", (t) => h("strong", {}, t.tag)],
    ["Build", (t) => (t.build_url ? link(t.build_url, t.build_id || "build") : t.build_id || "")],
    ["Commit", (t) => h("code", {}, (t.commit_id || "").slice(0, 12))],
    ["Artifacts", (t) => h("ul", { class: "plain" }, Object.entries(t.artifacts || {}).map(([id, a]) => artifact(id, a)))],
  ], "No tags yet.");
  const refresh = async () => {
    const data = await get("/api/data", { signal: ctx.signal });
    const all = Object.entries(data.repos).map(([id, r]) => ({ id, ...r }));
    repos.update(all);
    tags.update(all.flatMap((r) => Object.entries(r.branches || {}).flatMap(([branch, b]) =>
      Object.entries(b.tags || {}).map(([tag, t]) => ({ repo: r.id, branch, job_url: b.job_url, tag, ...t })))));
  };
  ctx.live((key) => key.startsWith(keys.repos), refresh);
  fill(view,
    h("h1", {}, "Build tags"),
    h("p", {}, "What CI and the platform's own builds recorded: each tag names a build and its artifacts."),
    h("h2", {}, "Repos"),
    repos,
    h("h2", {}, "Tags"),
    tags,
  );
  await refresh();
}
