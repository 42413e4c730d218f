// The turserver dashboard: one page per hash route (#/files, #/upload,
// #/site, #/replication, #/usage, #/worker). It calls the server's own
// endpoints with the token signed in with, kept in sessionStorage and sent
// only as an Authorization header.

import { lineChart } from "./charts.js";
import { tarBlob, removalBlob } from "./tar.js";

const TOKEN_KEY = "turserver-token";
const WHO_KEY = "turserver-token-kind";
const PAGE_SIZE = 100;
const main = document.getElementById("main");
const messageBox = document.getElementById("message");

// ---- helpers -------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, text) {
    super(`${status}: ${text.trim() || "(no message)"}`);
    this.status = status;
    this.text = text.trim();
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const t = token();
  if (t) headers.set("Authorization", `Bearer ${t}`);
  return fetch(path, { ...options, headers, cache: "no-store" });
}

async function apiJson(path, options) {
  const resp = await api(path, options);
  if (!resp.ok) throw new ApiError(resp.status, await resp.text());
  return resp.json();
}

/// The server's explanation of a failed request: its JSON `error`, or text.
function reason(error) {
  if (!(error instanceof ApiError)) return String(error.message || error);
  try {
    const doc = JSON.parse(error.text);
    if (doc && typeof doc.error === "string") return `${error.status}: ${doc.error}`;
  } catch (_) {
    /* plain text */
  }
  return error.message;
}

function showMessage(text, kind = "error") {
  messageBox.textContent = text;
  messageBox.className = kind;
  messageBox.hidden = false;
}

function clearMessage() {
  messageBox.hidden = true;
  messageBox.textContent = "";
}

function fail(error) {
  showMessage(reason(error));
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function when(text) {
  if (!text) return "–";
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? text : d.toLocaleString();
}

function ago(text) {
  if (!text) return "never";
  const seconds = Math.max(0, (Date.now() - new Date(text).getTime()) / 1000);
  if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  return `${Math.floor(seconds / 3600)} h ago`;
}

/// A store path as a URL on this server.
function fileUrl(path) {
  return "/" + path.split("/").map(encodeURIComponent).join("/");
}

function query() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [page, search = ""] = hash.split("?");
  return { page: page || "files", params: new URLSearchParams(search) };
}

/// Set when a page navigates after saying something: the message stays.
let keepMessage = false;

function go(page, params = {}, { keep = false } = {}) {
  keepMessage = keep;
  const search = new URLSearchParams(params).toString();
  location.hash = `#/${page}${search ? "?" + search : ""}`;
}

function definitionList(rows) {
  return h("dl", {}, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// ---- sign-in ---------------------------------------------------------------

const signin = document.getElementById("signin");
const signedin = document.getElementById("signedin");

function showSignedIn() {
  const on = Boolean(token());
  signin.hidden = on;
  signedin.hidden = !on;
  document.getElementById("who").textContent = `Signed in with ${sessionStorage.getItem(WHO_KEY) || "a token"}`;
}

signin.addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  const value = input.value.trim();
  if (!value) return;
  // Check the token before keeping it: a refused one is shown, not kept.
  const resp = await fetch("/_turserver/token", { headers: { Authorization: `Bearer ${value}` }, cache: "no-store" });
  if (!resp.ok) {
    showMessage(`Sign-in refused: ${resp.status}: ${(await resp.text()).trim()}`);
    return;
  }
  const who = await resp.json();
  sessionStorage.setItem(WHO_KEY, who.kind === "write" ? "the write token" : `a token for ${who.subject || "(no subject)"}`);
  sessionStorage.setItem(TOKEN_KEY, value);
  input.value = "";
  clearMessage();
  showSignedIn();
  render();
});

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(WHO_KEY);
  showSignedIn();
  render();
});

// ---- pages -----------------------------------------------------------------

/// Stops the current page's timers and streams when another is shown.
let leave = () => {};
/// The folder the files page shows, for the upload page's default.
let currentFolder = "";

const pages = { files, upload, site, replication, usage, worker };

async function render() {
  leave();
  leave = () => {};
  const { page, params } = query();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const show = pages[page] || files;
  // A page still loading when another is shown adds to its own view, which
  // is no longer on screen, and its timers stop at their next tick.
  const view = document.createElement("div");
  main.replaceChildren(view);
  try {
    await show(params, view);
    // For the benchmark: when the first page had its data on screen.
    if (!performance.getEntriesByName("turserver:rendered").length) performance.mark("turserver:rendered");
  } catch (error) {
    fail(error);
  }
}

// ---- files -----------------------------------------------------------------

async function files(params, view) {
  const prefix = params.get("prefix") || "";
  const filter = params.get("filter") || "";
  const cursor = params.get("cursor") || "";
  currentFolder = prefix;
  const crumbs = [h("a", { href: "#/files" }, "root")];
  let walked = "";
  for (const part of prefix.split("/").filter(Boolean)) {
    walked += part + "/";
    crumbs.push(" / ", h("a", { href: `#/files?prefix=${encodeURIComponent(walked)}` }, part));
  }
  const filterInput = h("input", { id: "filter", type: "search", value: filter, placeholder: "name starts with…", "aria-label": "Filter by name" });
  const filterForm = h(
    "form",
    {
      class: "filter",
      onsubmit: (event) => {
        event.preventDefault();
        go("files", { prefix, ...(filterInput.value ? { filter: filterInput.value } : {}) });
      },
    },
    filterInput,
    h("button", { type: "submit" }, "Filter"),
  );
  const detail = h("section", { id: "detail", class: "detail", "aria-live": "polite" });
  view.append(
    h("h1", {}, "Files"),
    h("nav", { class: "crumbs", "aria-label": "Folder" }, crumbs),
    h("div", { class: "toolbar" }, filterForm, h("a", { class: "button", href: "#/upload" }, "Upload here"), prefix ? h("button", { id: "delete-folder", type: "button", onclick: () => deleteFolder(prefix) }, "Delete folder") : null),
  );
  const search = new URLSearchParams({ prefix: prefix + filter, delimiter: "/", limit: String(PAGE_SIZE) });
  if (cursor) search.set("cursor", cursor);
  const listing = await apiJson(`/_api/files?${search}`);
  const rows = [
    ...listing.folders.map((folder) => ({ folder })),
    ...listing.files.map((file) => ({ file })),
  ].sort((a, b) => (a.folder || a.file.path).localeCompare(b.folder || b.file.path));
  const name = (path) => path.slice(prefix.length);
  const table = h(
    "table",
    { id: "listing" },
    h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", { class: "num" }, "Size"), h("th", { class: "wide" }, "Type"), h("th", { class: "wide" }, "Modified"))),
    h(
      "tbody",
      {},
      rows.length
        ? rows.map((row) =>
            row.folder
              ? h("tr", { class: "folder" }, h("td", {}, h("a", { href: `#/files?prefix=${encodeURIComponent(row.folder)}` }, name(row.folder))), h("td", { class: "num" }, "–"), h("td", { class: "wide" }, "folder"), h("td", { class: "wide" }, ""))
              : h(
                  "tr",
                  {},
                  h("td", {}, h("button", { type: "button", class: "link", "data-path": row.file.path, onclick: () => showFile(row.file, detail) }, name(row.file.path))),
                  h("td", { class: "num" }, bytes(row.file.size)),
                  h("td", { class: "wide" }, row.file.content_type),
                  h("td", { class: "wide" }, when(row.file.last_modified)),
                ),
          )
        : h("tr", {}, h("td", { colspan: 4 }, filter ? "No file or folder starts with that." : "This folder is empty.")),
    ),
  );
  const pager = h(
    "div",
    { class: "pager" },
    cursor ? h("a", { class: "button", href: `#/files?${new URLSearchParams({ prefix, ...(filter ? { filter } : {}) })}` }, "First page") : null,
    listing.next_cursor ? h("a", { class: "button", id: "next-page", href: `#/files?${new URLSearchParams({ prefix, ...(filter ? { filter } : {}), cursor: listing.next_cursor })}` }, "Next page") : null,
  );
  view.append(h("div", { class: "split" }, h("div", {}, table, pager), detail));
}

async function showFile(file, detail) {
  const url = fileUrl(file.path);
  const encodings = Object.entries(file.encodings || {});
  const cacheControl = h("span", { id: "cache-control" }, "…");
  const preview = h("div", { class: "preview", id: "preview" });
  detail.replaceChildren(
    h("h2", {}, file.path.split("/").pop()),
    definitionList([
      ["Path", file.path],
      ["Size", `${bytes(file.size)} (${file.size} bytes)`],
      ["Type", file.content_type],
      ["Modified", when(file.last_modified)],
      ["ETag", h("code", {}, file.etag)],
      ["Stored encodings", encodings.length ? encodings.map(([e, n]) => `${e} ${bytes(n)}`).join(", ") : "none (identity only)"],
      ["Cache-Control", cacheControl],
    ]),
    h(
      "div",
      { class: "toolbar" },
      h("button", { type: "button", onclick: () => download(file) }, "Download"),
      h("button", { type: "button", onclick: () => copyUrl(url) }, "Copy URL"),
      h("button", { type: "button", id: "delete-file", class: "danger", onclick: () => deleteFile(file.path) }, "Delete"),
    ),
    preview,
  );
  api(url, { method: "HEAD" })
    .then((resp) => (cacheControl.textContent = resp.headers.get("cache-control") || "(none)"))
    .catch(() => (cacheControl.textContent = "(could not be read)"));
  try {
    await renderPreview(file, url, preview);
  } catch (error) {
    preview.replaceChildren(h("p", {}, `No preview: ${reason(error)}`));
  }
}

const PREVIEW_BYTES = 64 * 1024;

async function renderPreview(file, url, preview) {
  const type = file.content_type.split(";")[0].trim();
  if (type.startsWith("image/")) {
    if (file.size > 16 * 1024 * 1024) return preview.replaceChildren(h("p", {}, "Too large to preview."));
    const resp = await api(url);
    if (!resp.ok) throw new ApiError(resp.status, await resp.text());
    const objectUrl = URL.createObjectURL(await resp.blob());
    const img = h("img", { src: objectUrl, alt: `Preview of ${file.path}`, id: "preview-image" });
    img.addEventListener("load", () => URL.revokeObjectURL(objectUrl));
    return preview.replaceChildren(img);
  }
  const textual = type.startsWith("text/") || /json|javascript|xml|svg|yaml|toml/.test(type);
  if (!textual) return preview.replaceChildren(h("p", {}, "No preview for this type."));
  const resp = await api(url, { headers: { Range: `bytes=0-${PREVIEW_BYTES - 1}` } });
  if (!resp.ok) throw new ApiError(resp.status, await resp.text());
  let text = await resp.text();
  if (type.includes("json") && file.size <= PREVIEW_BYTES) {
    try {
      text = JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      /* shown as stored */
    }
  }
  const cut = file.size > PREVIEW_BYTES ? h("p", {}, `The first ${bytes(PREVIEW_BYTES)} of ${bytes(file.size)}.`) : null;
  preview.replaceChildren(cut || "", h("pre", { id: "preview-text" }, text));
}

async function download(file) {
  try {
    const resp = await api(fileUrl(file.path));
    if (!resp.ok) throw new ApiError(resp.status, await resp.text());
    const objectUrl = URL.createObjectURL(await resp.blob());
    const a = h("a", { href: objectUrl, download: file.path.split("/").pop() });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(objectUrl), 10_000);
  } catch (error) {
    fail(error);
  }
}

async function copyUrl(url) {
  const absolute = new URL(url, location.href).href;
  try {
    await navigator.clipboard.writeText(absolute);
    showMessage(`Copied ${absolute}`, "info");
  } catch (_) {
    showMessage(`Copy this URL: ${absolute}`, "info");
  }
}

async function deleteFile(path) {
  if (!confirm(`Delete ${path}?`)) return;
  try {
    const resp = await api(fileUrl(path), { method: "DELETE" });
    if (!resp.ok) throw new ApiError(resp.status, await resp.text());
    showMessage(`Deleted ${path}`, "info");
    render();
  } catch (error) {
    fail(error);
  }
}

/// Every file under `prefix`, as one batch: all go, or none does.
async function deleteFolder(prefix) {
  try {
    const paths = [];
    let cursor = "";
    do {
      const search = new URLSearchParams({ prefix, limit: "1000" });
      if (cursor) search.set("cursor", cursor);
      const page = await apiJson(`/_api/files?${search}`);
      paths.push(...page.files.map((f) => f.path));
      cursor = page.next_cursor || "";
    } while (cursor);
    if (!confirm(`Delete the folder ${prefix} and its ${paths.length} files?`)) return;
    const resp = await api("/_api/batch", { method: "POST", body: removalBlob(paths), headers: { "Content-Type": "application/x-tar" } });
    if (!resp.ok) throw new ApiError(resp.status, await resp.text());
    showMessage(`Deleted ${paths.length} files under ${prefix}`, "info");
    const parent = prefix.replace(/[^/]*\/$/, "");
    go("files", parent ? { prefix: parent } : {}, { keep: true });
  } catch (error) {
    fail(error);
  }
}

// ---- upload ----------------------------------------------------------------

async function upload(params, view) {
  const target = h("input", { id: "upload-folder", value: params.get("prefix") ?? currentFolder, placeholder: "folder/ (empty: the root)" });
  const pickFiles = h("input", { id: "pick-files", type: "file", multiple: true });
  const pickFolder = h("input", { id: "pick-folder", type: "file", webkitdirectory: true });
  const list = h("ul", { class: "uploads", id: "upload-list" });
  const total = h("progress", { id: "upload-total", max: 1, value: 0 });
  const totalText = h("span", {}, "");
  const start = h("button", { type: "button", id: "upload-start", disabled: true }, "Upload");
  let chosen = [];

  const choose = (entries) => {
    chosen = entries;
    list.replaceChildren(
      ...entries.slice(0, 500).map((e) => h("li", {}, h("span", { class: "name" }, e.relative), " ", h("progress", { max: 1, value: 0 }), " ", h("span", { class: "size" }, bytes(e.file.size)))),
      entries.length > 500 ? h("li", {}, `… and ${entries.length - 500} more`) : "",
    );
    const size = entries.reduce((n, e) => n + e.file.size, 0);
    totalText.textContent = `${entries.length} files, ${bytes(size)}`;
    start.disabled = entries.length === 0;
    start.textContent = `Upload ${entries.length} files`;
  };
  const fromInput = (input) => () => choose([...input.files].map((file) => ({ file, relative: file.webkitRelativePath || file.name })));
  pickFiles.addEventListener("change", fromInput(pickFiles));
  pickFolder.addEventListener("change", fromInput(pickFolder));

  const drop = h("div", { class: "drop", id: "drop", tabindex: 0 }, "Drop files or folders here");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const roots = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
    choose(roots.length ? await walkEntries(roots) : [...event.dataTransfer.files].map((file) => ({ file, relative: file.name })));
  });

  start.addEventListener("click", () => {
    let folder = target.value.trim().replace(/^\/+/, "");
    if (folder && !folder.endsWith("/")) folder += "/";
    sendBatch(folder, chosen, list, total, totalText, start);
  });

  view.append(
    h("h1", {}, "Upload"),
    h("p", {}, "Everything chosen is published as one batch: every edge sees all of it at once, or none of it."),
    h("label", { for: "upload-folder" }, "Into folder "),
    target,
    h("div", { class: "pickers" }, h("label", {}, "Files ", pickFiles), h("label", {}, "A folder ", pickFolder)),
    drop,
    h("div", { class: "toolbar" }, start, total, totalText),
    list,
  );
}

/// Files under dropped entries, with their paths relative to the drop.
async function walkEntries(roots) {
  const out = [];
  const visit = async (entry) => {
    if (entry.isFile) {
      const file = await new Promise((ok, no) => entry.file(ok, no));
      out.push({ file, relative: entry.fullPath.replace(/^\//, "") });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, no) => reader.readEntries(ok, no));
        if (!batch.length) break;
        for (const child of batch) await visit(child);
      }
    }
  };
  for (const root of roots) await visit(root);
  return out;
}

function sendBatch(folder, chosen, list, total, totalText, start) {
  const { blob, ends } = tarBlob(chosen.map((e) => ({ path: folder + e.relative, blob: e.file, mtime: e.file.lastModified })));
  const bars = [...list.querySelectorAll("progress")];
  const began = ends.map((end, i) => end - chosen[i].file.size);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/_api/batch");
  const t = token();
  if (t) xhr.setRequestHeader("Authorization", `Bearer ${t}`);
  xhr.setRequestHeader("Content-Type", "application/x-tar");
  start.disabled = true;
  total.max = blob.size;
  xhr.upload.addEventListener("progress", (event) => {
    total.value = event.loaded;
    totalText.textContent = `${bytes(event.loaded)} of ${bytes(blob.size)} sent`;
    bars.forEach((bar, i) => {
      const size = chosen[i].file.size || 1;
      bar.value = Math.max(0, Math.min(1, (event.loaded - began[i]) / size));
    });
  });
  xhr.addEventListener("load", () => {
    if (xhr.status >= 200 && xhr.status < 300) {
      bars.forEach((bar) => (bar.value = 1));
      total.value = blob.size;
      totalText.textContent = `Published ${chosen.length} files (${bytes(blob.size)} sent)`;
      showMessage(`Uploaded ${chosen.length} files into ${folder || "the root"}`, "info");
      list.append(h("li", {}, h("a", { href: `#/files?prefix=${encodeURIComponent(folder)}`, id: "upload-done" }, "See them in Files")));
    } else {
      start.disabled = false;
      fail(new ApiError(xhr.status, xhr.responseText));
    }
  });
  xhr.addEventListener("error", () => {
    start.disabled = false;
    showMessage("The upload failed: the connection to the server was lost. Nothing was published.");
  });
  xhr.send(blob);
}

// ---- site rules ------------------------------------------------------------

async function site(params, view) {
  const editor = h("textarea", { id: "site-rules", rows: 18, spellcheck: "false", "aria-describedby": "site-error" });
  const error = h("p", { id: "site-error", class: "field-error", role: "alert" });
  const save = h("button", { type: "submit", id: "site-save" }, "Save");
  const load = async () => {
    const resp = await api("/_api/site");
    if (!resp.ok) throw new ApiError(resp.status, await resp.text());
    const text = await resp.text();
    try {
      editor.value = JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      editor.value = text;
    }
  };
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        error.textContent = "";
        editor.removeAttribute("aria-invalid");
        const resp = await api("/_api/site", { method: "PUT", body: editor.value, headers: { "Content-Type": "application/json" } });
        if (resp.ok) {
          showMessage("Site rules saved: every edge serves them once it has synced.", "info");
          await load();
        } else {
          editor.setAttribute("aria-invalid", "true");
          error.textContent = `${resp.status}: ${(await resp.text()).trim()}`;
        }
      },
    },
    h("label", { for: "site-rules" }, "Site rules (JSON)"),
    editor,
    error,
    h("div", { class: "toolbar" }, save, h("button", { type: "button", onclick: () => load().catch(fail) }, "Reload")),
  );
  view.append(h("h1", {}, "Site rules"), form);
  await load();
}

// ---- replication -----------------------------------------------------------

async function replication(params, view) {
  const facts = h("div", { id: "replication" });
  const charts = h("div", { class: "charts" });
  view.append(h("h1", {}, "Replication"), facts, charts);
  const refresh = async () => {
    const [status, ready] = await Promise.all([apiJson("/_turserver/status"), api("/_turserver/ready").then(async (r) => ({ ok: r.ok, text: (await r.text()).trim() }))]);
    const sync = status.sync;
    const rows = [
      ["Mode", status.mode === "replica" ? "embedded replica of a primary" : "local database (no primary)"],
      ["Primary", status.primary || "–"],
      ["Ready", h("span", { id: "ready" }, ready.ok ? "ready" : ready.text)],
    ];
    if (sync) {
      rows.push(
        ["Replication index", h("span", { id: "replication-index" }, String(sync.replication_index))],
        ["Read-your-writes position", `${sync.replication_index}: a read carrying turserver-position up to this is served at once`],
        ["Last sync", `${ago(sync.last_success)} (${when(sync.last_success)})`],
        ["Sync duration", `${sync.last_duration_ms.toFixed(1)} ms`],
        ["Follows", sync.mode === "stream" ? "the primary's commit stream" : `the interval${sync.stream_error ? ` (${sync.stream_error})` : ""}`],
        ["Syncs", `${sync.syncs_ok} ok, ${sync.syncs_failed} failed`],
        ["Last error", h("span", { id: "sync-error" }, sync.last_error || "none")],
      );
    }
    facts.replaceChildren(definitionList(rows));
  };
  const refreshCharts = async () => {
    const usage = await apiJson("/_turserver/usage");
    const times = usage.points.map((p) => p.at);
    charts.replaceChildren(
      lineChart({ title: "Syncs and failures per interval", times, series: [{ name: "syncs", values: usage.points.map((p) => p.syncs) }, { name: "failures", values: usage.points.map((p) => p.sync_failures) }] }),
      lineChart({ title: "Mean sync duration", times, series: [{ name: "ms", values: usage.points.map((p) => p.sync_ms) }], format: (v) => `${v.toFixed(1)} ms` }),
    );
  };
  await Promise.all([refresh(), refreshCharts()]);
  leave = every([
    [2000, refresh],
    [10000, refreshCharts],
  ], view);
}

/// Runs each [ms, fn] on its timer while `view` is on screen (errors shown,
/// not fatal); returns the function that stops them.
function every(jobs, view) {
  const stop = () => timers.forEach(clearInterval);
  const timers = jobs.map(([ms, job]) =>
    setInterval(() => {
      if (!view.isConnected) return stop();
      job().then(clearStale, fail);
    }, ms),
  );
  return stop;
}

function clearStale() {
  if (messageBox.className === "error" && /^(5\d\d|Failed to fetch)/.test(messageBox.textContent)) clearMessage();
}

// ---- usage -----------------------------------------------------------------

async function usage(params, view) {
  const body = h("div", { id: "usage" });
  view.append(h("h1", {}, "Usage"), body);
  const refresh = async () => {
    const doc = await apiJson("/_turserver/usage");
    const points = doc.points;
    const times = points.map((p) => p.at);
    const pick = (key) => points.map((p) => p[key]);
    const perSecond = (v) => `${v < 10 ? v.toFixed(1) : Math.round(v)}/s`;
    const ms = (v) => `${v < 10 ? v.toFixed(2) : Math.round(v)} ms`;
    const topTable = (id, rows, key, format) =>
      h(
        "table",
        { id },
        h("thead", {}, h("tr", {}, h("th", {}, "Path"), h("th", { class: "num" }, key))),
        h("tbody", {}, rows.length ? rows.map((r) => h("tr", {}, h("td", {}, r.path), h("td", { class: "num" }, format(r[key])))) : h("tr", {}, h("td", { colspan: 2 }, "nothing yet"))),
      );
    body.replaceChildren(
      h("p", {}, `One point every ${doc.interval_seconds} s, the last hour.`),
      h(
        "div",
        { class: "charts" },
        lineChart({ title: "Requests per second", times, series: [{ name: "req/s", values: pick("requests_per_second") }], format: perSecond }),
        lineChart({ title: "Latency to the response head", times, series: [{ name: "p50", values: pick("p50_ms") }, { name: "p99", values: pick("p99_ms") }], format: ms }),
        lineChart({ title: "Bytes served per second", times, series: [{ name: "bytes/s", values: points.map((p) => p.bytes / doc.interval_seconds) }], format: (v) => `${bytes(Math.round(v))}/s` }),
        lineChart({ title: "Responses by status class", times, series: ["2xx", "3xx", "4xx", "5xx"].map((c) => ({ name: c, values: points.map((p) => p.status[c]) })) }),
        lineChart({ title: "Response cache hit rate", times, series: [{ name: "hits", values: points.map((p) => (p.cache_hit_rate === null ? null : p.cache_hit_rate * 100)) }], format: (v) => `${Math.round(v)}%`, max: 100 }),
      ),
      h("div", { class: "tops" }, h("section", {}, h("h2", {}, "Top paths by requests"), topTable("top-requests", doc.top_by_requests, "requests", String)), h("section", {}, h("h2", {}, "Top paths by bytes"), topTable("top-bytes", doc.top_by_bytes, "bytes", bytes))),
    );
  };
  await refresh();
  leave = every([[5000, refresh]], view);
}

// ---- worker ----------------------------------------------------------------

async function worker(params, view) {
  const facts = h("div", { id: "worker" });
  const pick = h("input", { id: "worker-file", type: "file", accept: ".wasm,application/wasm" });
  const result = h("p", { id: "worker-result", role: "status" });
  const deploy = h("button", { type: "submit", id: "worker-deploy" }, "Deploy");
  const refresh = async () => {
    const status = await apiJson("/_turserver/status");
    const w = status.worker;
    facts.replaceChildren(
      definitionList([
        ["Active version", h("code", { id: "worker-version" }, w.version)],
        ["Origin", w.origin],
        ["Active since", when(w.active_since)],
        ["Last refused worker", h("span", { id: "worker-error" }, w.last_error || "none")],
      ]),
    );
  };
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const file = pick.files[0];
        if (!file) return (result.textContent = "Choose a .wasm component first.");
        deploy.disabled = true;
        result.textContent = `Deploying ${file.name} (${bytes(file.size)})…`;
        try {
          const resp = await api("/_turserver/worker", { method: "PUT", body: file, headers: { "Content-Type": "application/wasm" } });
          const text = (await resp.text()).trim();
          if (!resp.ok) throw new ApiError(resp.status, text);
          result.textContent = `Deployed version ${JSON.parse(text).version}: every edge swaps to it once it has synced.`;
          await refresh();
        } catch (error) {
          result.textContent = `Refused: ${reason(error)}`;
        } finally {
          deploy.disabled = false;
        }
      },
    },
    h("label", { for: "worker-file" }, "Worker component (.wasm) "),
    pick,
    deploy,
    result,
  );
  view.append(h("h1", {}, "Worker"), facts, h("h2", {}, "Deploy a new worker"), form);
  await refresh();
  leave = every([[5000, refresh]], view);
}

// ---- start -----------------------------------------------------------------

window.addEventListener("hashchange", () => {
  if (!keepMessage) clearMessage();
  keepMessage = false;
  render();
});
showSignedIn();
render();
