// Vendors: the git hosts and Slack the platform is connected to. Tokens and webhook secrets
// are entered (type=password) and never shown: the API answers *** for them.

import { del, enc, get, put } from "../api.js";
import { action, fill, form, h, table, when } from "../dom.js";
import { keys } from "../events.js";

export async function render(ctx, view) {
  const rows = table("Vendors", [
    ["Vendor", (v) => v.name],
    ["Connected", (v) => (v.vendor ? "yes" : "no")],
    ["Host", (v) => v.host || ""],
    ["Username", (v) => v.username || ""],
    ["Token", (v) => (v.vendor ? "set (never shown)" : "")],
    ["Webhook secret", (v) => (v.webhook_secret ? "set (never shown)" : v.vendor ? "not set" : "")],
    ["Updated", (v) => (v.vendor ? when(v.updated) : "")],
    ...(ctx.canWrite
      ? [["Actions", (v) => (v.vendor
        ? action("Disconnect", () => del(`/api/vendors/${enc(v.name)}`), ctx.alert, { "aria-label": `Disconnect ${v.name}` })
        : "")]]
      : []),
  ]);
  const refresh = async () => {
    const map = await get("/api/vendors", { signal: ctx.signal });
    rows.update(Object.entries(map).map(([name, v]) => ({ name, ...v })));
  };
  ctx.live((key) => key.startsWith(keys.vendors), refresh);
  fill(view,
    h("h1", {}, "Vendors"),
    rows,
    ctx.canWrite
      ? form("Connect a vendor", [
        { name: "vendor", label: "Vendor", options: [["github", "GitHub"], ["gitlab", "GitLab"], ["bitbucket", "Bitbucket"], ["slack", "Slack"]] },
        { name: "host", label: "Host", api: ["host"], hint: "empty: the vendor's public host" },
        { name: "username", label: "Username", api: ["username"] },
        { name: "token", label: "Token", type: "password", api: ["token"], autocomplete: "new-password", hint: "empty: keep the stored one" },
        { name: "webhook_secret", label: "Webhook secret", type: "password", api: ["webhook_secret"], autocomplete: "new-password", hint: "signs push webhooks; empty: keep the stored one" },
      ], "Connect", async (v) => {
        const body = { username: v.username.trim() };
        if (v.host.trim()) body.host = v.host.trim();
        if (v.token) body.token = v.token;
        if (v.webhook_secret) body.webhook_secret = v.webhook_secret;
        await put(`/api/vendors/${enc(v.vendor)}`, body);
        return `Connected ${v.vendor}.`;
      })
      : null,
  );
  await refresh();
}
