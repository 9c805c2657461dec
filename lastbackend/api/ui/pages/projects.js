// Projects: the list, live, and a form to create one.

import { enc, list, post } from "../api.js";
import { fill, form, h, table, when } from "../dom.js";
import { keys } from "../events.js";

const META = new RegExp(`^${keys.projects}[^/]+/meta$`);

export async function render(ctx, view) {
  const rows = table("Projects", [
    ["Name", (p) => h("a", { href: `#/projects/${enc(p.name)}` }, p.name)],
    ["Description", (p) => p.description || ""],
    ["Created", (p) => when(p.created)],
  ], "No projects yet.");
  const refresh = async () => rows.update(await list("/api/projects", { signal: ctx.signal }));
  ctx.live((key) => META.test(key), refresh);
  fill(view,
    h("h1", {}, "Projects"),
    rows,
    ctx.canWrite
      ? form("New project", [
        { name: "name", label: "Name", api: ["name"], hint: "a DNS label: a-z, 0-9 and -" },
        { name: "description", label: "Description", api: ["description"] },
      ], "Create project", async (v) => {
        const made = await post("/api/projects", { name: v.name.trim(), description: v.description });
        return `Created ${made.name}.`;
      })
      : null,
  );
  await refresh();
}
