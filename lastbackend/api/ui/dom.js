// Building the page: elements from data with textContent only (never innerHTML), tables,
// forms whose API errors land next to the field they name, and alerts.

let ids = 0;
export const uid = (base) => `${base}-${++ids}`;

/** `h("a", {href}, "text", child...)`: attributes, `on<event>` listeners, children. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  add(el, children);
  return el;
}

/** Append children to an element, skipping null, undefined and false (for `cond ? x : null`). */
export function fill(el, ...children) {
  add(el, children);
  return el;
}

function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** A link only for http(s) URLs: anything else (javascript:, data:) is shown as text. */
export function link(url, text = url) {
  try {
    const parsed = new URL(url, location.href);
    if (parsed.protocol === "http:" || parsed.protocol === "https:") {
      return h("a", { href: parsed.href, rel: "noreferrer noopener" }, text);
    }
  } catch {
    // not a URL
  }
  return document.createTextNode(text);
}

export const short = (id) => (id ? String(id).slice(0, 8) : "");
export const when = (stamp) => (stamp ? String(stamp).replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "—");

/**
 * A table with an accessible name: `columns` are [title, row => content]. The rows are
 * replaced in place by `update(rows)`, so a live page keeps its place and focus elsewhere.
 */
export function table(label, columns, empty = "None yet.") {
  const body = h("tbody");
  const note = h("p", { class: "empty", hidden: true }, empty);
  const el = h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { "aria-label": label },
      h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", { scope: "col" }, title)))),
      body,
    ),
    note,
  );
  el.update = (rows) => {
    const fragment = document.createDocumentFragment();
    for (const row of rows) {
      fragment.append(h("tr", {}, columns.map(([title, cell]) => h("td", { "data-label": title }, cell(row)))));
    }
    body.replaceChildren(fragment);
    note.hidden = rows.length > 0;
  };
  return el;
}

/** A live region for messages; hidden (not just empty) while there is nothing to say. */
export function alertBox() {
  const el = h("div", { role: "alert", class: "alert", hidden: true });
  el.show = (message) => {
    el.textContent = message;
    el.hidden = !message;
  };
  el.clear = () => el.show("");
  return el;
}

/**
 * A labelled control. `spec`: {name, label, type, value, options, rows, api, hint,
 * autocomplete}; `api` lists the body paths the API names this field by in a 422.
 */
export function field(spec) {
  const id = uid(spec.name);
  const errorId = `${id}-error`;
  const hintId = spec.hint ? `${id}-hint` : null;
  let control;
  if (spec.options) {
    control = h("select", { id, name: spec.name }, spec.options.map(([value, text]) => h("option", { value }, text)));
    if (spec.value !== undefined) control.value = spec.value;
  } else if (spec.rows) {
    control = h("textarea", { id, name: spec.name, rows: spec.rows, spellcheck: "false" });
    control.value = spec.value ?? "";
  } else {
    control = h("input", {
      id,
      name: spec.name,
      type: spec.type || "text",
      autocomplete: spec.autocomplete || "off",
      inputmode: spec.type === "number" ? "numeric" : null,
      spellcheck: "false",
    });
    if (spec.type === "file") {
      if (spec.accept) control.accept = spec.accept;
    } else control.value = spec.value ?? "";
  }
  if (hintId) control.setAttribute("aria-describedby", hintId);
  const error = h("p", { class: "field-error", id: errorId, hidden: true });
  const wrap = h(
    "div",
    { class: "field" },
    h("label", { for: id }, spec.label),
    control,
    hintId ? h("p", { class: "hint", id: hintId }, spec.hint) : null,
    error,
  );
  return { spec, control, error, wrap, hintId };
}

function setError(f, message) {
  f.error.textContent = message;
  f.error.hidden = !message;
  const described = [f.hintId, message ? f.error.id : null].filter(Boolean).join(" ");
  if (described) f.control.setAttribute("aria-describedby", described);
  else f.control.removeAttribute("aria-describedby");
  if (message) f.control.setAttribute("aria-invalid", "true");
  else f.control.removeAttribute("aria-invalid");
}

/** How closely the API's error path names this field (`config.env['A']` names `config.env`):
 * the length of the longest of its paths that the error's path starts with, 0 for none. */
function names(paths, path) {
  const hits = paths.filter((p) => path === p || path.startsWith(`${p}.`) || path.startsWith(`${p}[`));
  return Math.max(0, ...hits.map((p) => p.length));
}

/** The field an error's path names most closely (`health_check.data.endpoint`: Endpoint). */
function named(fields, path) {
  let best = null;
  let score = 0;
  for (const f of fields) {
    const found = f.spec.api ? names(f.spec.api, path) : 0;
    if (found > score) [best, score] = [f, found];
  }
  return best;
}

/**
 * A form with an accessible name: `fields` specs, a submit button, `submit(values)` the call.
 * A 422 puts each message next to the field it names (aria-invalid, aria-describedby); any
 * other refusal (403 for a read-only token, 409, 412) goes to the form's alert.
 */
export function form(name, specs, button, submit, { reset = true, extra = null } = {}) {
  const fields = specs.map(field);
  const alert = alertBox();
  const status = h("p", { class: "form-status", role: "status" });
  const submitButton = h("button", { type: "submit" }, button);
  const el = h(
    "form",
    { "aria-label": name, novalidate: true, class: "card" },
    h("h2", {}, name),
    fields.map((f) => f.wrap),
    extra,
    alert,
    h("div", { class: "actions" }, submitButton, status),
  );
  el.fields = Object.fromEntries(fields.map((f) => [f.spec.name, f.control]));
  el.clearErrors = () => {
    alert.clear();
    for (const f of fields) setError(f, "");
  };
  el.showError = (error) => {
    el.clearErrors();
    const rest = [];
    if (error.status === 422 && error.fields) {
      for (const [path, message] of error.fields()) {
        const f = named(fields, path);
        if (f) setError(f, f.error.hidden ? message : `${f.error.textContent}; ${message}`);
        else rest.push(message);
      }
    } else rest.push(error.message);
    alert.show(rest.join("; "));
    const first = fields.find((f) => !f.error.hidden);
    if (first) first.control.focus();
  };
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    el.clearErrors();
    const values = Object.fromEntries(
      fields.map((f) => [f.spec.name, f.spec.type === "file" ? f.control.files : f.control.value]),
    );
    submitButton.disabled = true;
    status.textContent = ""; // it speaks once the API has answered, not before
    el.setAttribute("aria-busy", "true");
    try {
      const done = await submit(values, el);
      status.textContent = done || "Done.";
      if (reset) for (const f of fields) if (f.spec.type !== "file" && !f.spec.options) f.control.value = f.spec.value ?? "";
    } catch (error) {
      status.textContent = "";
      el.showError(error);
    } finally {
      submitButton.disabled = false;
      el.removeAttribute("aria-busy");
    }
  });
  return el;
}

/** A button that runs `action`; a refusal shows in `alert`. */
export function action(label, run, alert, props = {}) {
  const button = h("button", { type: "button", ...props }, label);
  button.addEventListener("click", async () => {
    alert.clear();
    button.disabled = true;
    try {
      await run();
    } catch (error) {
      alert.show(error.message);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/** A role=log region fed by text pieces (`write`); it follows the end and keeps ~200 kB. */
export function logView(label) {
  const el = h("pre", { role: "log", "aria-label": label, class: "log", tabindex: "0" });
  let partial = "";
  el.write = (text) => {
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
    partial += text;
    const cut = partial.lastIndexOf("\n");
    if (cut >= 0) {
      el.insertAdjacentText("beforeend", partial.slice(0, cut + 1));
      partial = partial.slice(cut + 1);
    }
    if (el.textContent.length > 400000) el.textContent = el.textContent.slice(-200000);
    if (atEnd) el.scrollTop = el.scrollHeight;
  };
  el.flush = () => {
    if (partial) el.insertAdjacentText("beforeend", `${partial}\n`);
    partial = "";
  };
  el.reset = (text = "") => {
    partial = "";
    el.textContent = text;
  };
  return el;
}
