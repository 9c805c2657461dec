// Sign in: the token is checked with /api/whoami (a wrong one is the API's 401) and kept for
// this tab only (sessionStorage).

import { get, session } from "../api.js";
import { form, h } from "../dom.js";

export function render(view, message, done) {
  const el = form(
    "Sign in",
    [{ name: "token", label: "Token", type: "password", autocomplete: "current-password" }],
    "Sign in",
    async ({ token }) => {
      const value = token.trim();
      if (!value) throw new Error("Enter a token: an admin or a read-only one.");
      const who = await get("/api/whoami", { headers: { Authorization: `Bearer ${value}` }, quiet: true });
      session.token = value;
      done(who.role);
      return "Signed in.";
    },
    { reset: false },
  );
  view.replaceChildren(
    h("h1", {}, "Sign in"),
    h("p", {}, "This API needs a token. It is kept for this tab only and sent as a bearer header."),
    el,
  );
  if (message) el.showError(new Error(message));
  el.fields.token.focus();
}
