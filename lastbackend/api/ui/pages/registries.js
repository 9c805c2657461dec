// Registry accounts: what nodes pull private images with. The password is entered
// (type=password) and never shown.

import { del, enc, list, post } from "../api.js";
import { action, fill, form, h, table, when } from "../dom.js";
import { keys } from "../events.js";

export async function render(ctx, view) {
  const rows = table("Registries", [
    ["Host", (r) => h("code", {}, r.host)],
    ["Username", (r) => r.username],
    ["Email", (r) => r.email || ""],
    ["Password", () => "set (never shown)"],
    ["Updated", (r) => when(r.updated)],
    ...(ctx.canWrite
      ? [["Actions", (r) => action("Delete", () => del(`/api/registries/${enc(r.host)}`), ctx.alert, { "aria-label": `Delete ${r.host}` })]]
      : []),
  ], "No registry accounts.");
  const refresh = async () => rows.update(await list("/api/registries", { signal: ctx.signal }));
  ctx.live((key) => key.startsWith(keys.registries), refresh);
  fill(view,
    h("h1", {}, "Registries"),
    rows,
    ctx.canWrite
      ? form("New registry account", [
        { name: "host", label: "Host", api: ["host"], hint: "registry.local:5000" },
        { name: "username", label: "Username", api: ["username"] },
        { name: "password", label: "Password", type: "password", api: ["password"], autocomplete: "new-password" },
        { name: "email", label: "Email", type: "email", api: ["email"] },
      ], "Add account", async (v) => {
        const made = await post("/api/registries", { host: v.host.trim(), username: v.username, password: v.password, email: v.email.trim() });
        return `Added ${made.host}.`;
      })
      : null,
  );
  await refresh();
}
