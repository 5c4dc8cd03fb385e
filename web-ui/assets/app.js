// Glimpse web UI: plain JavaScript over the JSON API (/api/openapi.json).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 60;
const state = {
  mode: null,            // {kind: "text", q} | {kind: "image", file} | {kind: "similar", id, name}
  sort: "relevance",
  filters: { after: "", before: "", folder: "", camera: "" },
  results: [],           // every result loaded (strong and weak)
  showWeak: false,
  nextOffset: null,
  loading: false,
  generation: 0,         // bumps on each new search; stale responses are dropped
  current: -1,           // index (in visible()) of the photo in the lightbox
};

// ---------- API ----------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    await askToken();
    return api(path, options);
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const e = body?.error ?? { code: "http_" + response.status, message: response.statusText };
    throw new ApiError(response.status, e.code, e.message);
  }
  return body;
}

function askToken() {
  return new Promise((resolve) => {
    const dialog = $("token-dialog");
    dialog.addEventListener("close", () => {
      const token = $("token-input").value.trim();
      document.cookie = `glimpse_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
      resolve();
    }, { once: true });
    if (!dialog.open) dialog.showModal();
  });
}

function toast(message) {
  const t = $("toast");
  t.textContent = message;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
}

// ---------- search ----------
function params(offset) {
  const p = new URLSearchParams({ k: String(PAGE), offset: String(offset), sort: state.sort });
  for (const [key, value] of Object.entries(state.filters)) if (value) p.set(key, value);
  if (state.mode?.kind === "text") p.set("q", state.mode.q);
  return p;
}

async function fetchPage(offset) {
  const mode = state.mode;
  if (mode.kind === "text") return api(`/api/search?${params(offset)}`);
  if (mode.kind === "similar") return api(`/api/photos/${mode.id}/similar?${params(offset)}`);
  const form = new FormData();
  form.append("image", mode.file);
  return api(`/api/search/image?${params(offset)}`, { method: "POST", body: form });
}

async function search(mode) {
  if (!$("status-view").hidden) {
    $("status-view").hidden = true;
    $("search-view").hidden = false;
    history.replaceState(null, "", "/");
    loadFacets();
  }
  state.mode = mode;
  state.results = [];
  state.nextOffset = 0;
  state.showWeak = false;
  state.generation += 1;
  $("grid").replaceChildren();
  $("notice").hidden = true;
  $("more").hidden = true;
  $("empty").hidden = !!mode;
  updateUrl();
  renderChips();
  if (!mode) { $("count").textContent = ""; $("took").textContent = ""; return; }
  await loadMore();
}

async function loadMore() {
  if (state.loading || state.nextOffset === null || !state.mode) return;
  const generation = state.generation;
  state.loading = true;
  try {
    const page = await fetchPage(state.nextOffset);
    if (generation !== state.generation) return;
    state.results.push(...page.results);
    state.nextOffset = page.next_offset;
    $("took").textContent = `${page.took_ms.toFixed(0)} ms`;
    render();
  } catch (e) {
    if (generation !== state.generation) return;
    state.nextOffset = null;
    showError(e);
  } finally {
    if (generation === state.generation) state.loading = false;
  }
  // Keep filling the screen while the sentinel is visible.
  if (generation === state.generation && wantsMore() && sentinelVisible()) loadMore();
}

function showError(e) {
  const notice = $("notice");
  notice.hidden = false;
  notice.textContent = e instanceof ApiError ? e.message : `The server cannot be reached (${e.message}).`;
}

const strong = () => state.results.filter((r) => !r.weak);
function visible() {
  const s = strong();
  // Nothing stands out: show the closest anyway rather than an empty page.
  if (state.showWeak || s.length === 0) return state.results;
  return s;
}
function wantsMore() {
  if (state.nextOffset === null) return false;
  // Past the relevant ones, load more only when weak results are shown.
  const anyWeak = state.results.some((r) => r.weak);
  return !anyWeak || state.showWeak || strong().length === 0;
}

function render() {
  const shown = visible();
  const grid = $("grid");
  const have = grid.children.length;
  if (have > shown.length) grid.replaceChildren();
  for (let i = grid.children.length; i < shown.length; i++) grid.appendChild(tile(shown[i], i));
  layout();
  const weak = state.results.length - strong().length;
  const s = strong().length;
  const more = state.nextOffset !== null ? "+" : "";
  $("count").textContent = s > 0
    ? `${s}${state.results.some((r) => r.weak) ? "" : more} ${s === 1 ? "photo" : "photos"}`
    : `${shown.length}${more} closest ${shown.length === 1 ? "photo" : "photos"}`;
  const notice = $("notice");
  if (state.results.length === 0) {
    notice.hidden = false;
    notice.textContent = "No photos match. Try other words, or remove a filter.";
  } else if (s === 0) {
    notice.hidden = false;
    notice.textContent = "Nothing stands out for this search — these are the closest photos.";
  } else if (notice.textContent.startsWith("Nothing") || notice.textContent.startsWith("No photos")) {
    notice.hidden = true;
  }
  const moreBox = $("more");
  moreBox.hidden = !(weak > 0 && s > 0 && !state.showWeak);
  $("show-weak").textContent = `Show ${weak}${state.nextOffset !== null ? "+" : ""} weaker matches`;
}

function tile(result, index) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tile" + (result.weak ? " weak" : "");
  button.setAttribute("role", "listitem");
  button.dataset.index = String(index);
  button.dataset.id = String(result.id);
  button.dataset.ratio = String(ratio(result));
  button.title = `${result.file_name} · ${result.taken_at.slice(0, 10)}`;
  if (result.thumbnail) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = result.file_name;
    img.addEventListener("load", () => img.classList.add("loaded"));
    img.src = result.thumbnail;
    button.appendChild(img);
  } else {
    const span = document.createElement("span");
    span.className = "noimg";
    span.textContent = result.file_name;
    button.appendChild(span);
  }
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(3);
  button.appendChild(score);
  button.addEventListener("click", () => openLightbox(Number(button.dataset.index)));
  return button;
}

function ratio(r) {
  const w = r.width || 4, h = r.height || 3;
  return Math.min(Math.max(w / h, 0.4), 3);
}

// Justified rows: fill each row at the target height, then scale it to the width.
function layout() {
  const grid = $("grid");
  const width = grid.clientWidth;
  if (!width) return;
  const gap = 6;
  const target = window.matchMedia("(max-width: 820px)").matches ? 120 : 200;
  const tiles = Array.from(grid.children);
  let row = [];
  let rowRatio = 0;
  const flush = (last) => {
    const free = width - gap * (row.length - 1);
    let height = free / rowRatio;
    if (last && height > target * 1.3) height = target;
    for (const t of row) {
      t.style.height = `${Math.floor(height)}px`;
      t.style.width = `${Math.floor(height * Number(t.dataset.ratio))}px`;
    }
    row = []; rowRatio = 0;
  };
  for (const t of tiles) {
    row.push(t);
    rowRatio += Number(t.dataset.ratio);
    if (rowRatio * target + gap * (row.length - 1) >= width) flush(false);
  }
  if (row.length) flush(true);
}

// ---------- lightbox ----------
async function openLightbox(index) {
  const shown = visible();
  if (index < 0 || index >= shown.length) return;
  state.current = index;
  const r = shown[index];
  const box = $("lightbox");
  const img = $("lb-img");
  img.onerror = () => { if (r.thumbnail && img.src.indexOf("/thumbnail") < 0) img.src = r.thumbnail; };
  img.src = r.original;
  img.alt = r.file_name;
  $("lb-title").textContent = r.file_name;
  $("lb-original").href = r.original;
  box.hidden = false;
  document.body.style.overflow = "hidden";
  $("more-like-this").focus();
  const meta = [
    ["Taken", r.taken_at.replace("T", " ").slice(0, 16) + (r.taken_at_source === "file_mtime" ? " (file date)" : "")],
    ["Camera", r.camera],
    ["Size", r.width && r.height ? `${r.width} × ${r.height}` : null],
    ["Folder", r.folder],
    ["Match", r.score.toFixed(3) + (r.weak ? " (weak)" : "")],
  ];
  fillMeta(meta);
  try {
    const d = await api(`/api/photos/${r.id}`);
    if (state.current !== index) return;
    if (d.lens) meta.splice(2, 0, ["Lens", d.lens]);
    if (d.gps) meta.splice(3, 0, ["Place", `${d.gps[0].toFixed(5)}, ${d.gps[1].toFixed(5)}`]);
    meta.push(["File", `${(d.size / 1e6).toFixed(1)} MB · ${d.mime}`]);
    fillMeta(meta);
  } catch (e) { /* the basic facts are already shown */ }
}

function fillMeta(rows) {
  const dl = $("lb-meta");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    if (!v) continue;
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
}

function closeLightbox() {
  $("lightbox").hidden = true;
  $("lb-img").removeAttribute("src");
  document.body.style.overflow = "";
  const t = $("grid").children[state.current];
  if (t) t.focus();
}

function step(delta) {
  const next = state.current + delta;
  if (next >= 0 && next < visible().length) {
    openLightbox(next);
    if (next > visible().length - 6 && wantsMore()) loadMore();
  }
}

function moreLikeThis() {
  const r = visible()[state.current];
  if (!r) return;
  closeLightbox();
  $("q").value = "";
  search({ kind: "similar", id: r.id, name: r.file_name });
  window.scrollTo({ top: 0 });
}

// ---------- filters, chips, URL ----------
async function loadFacets() {
  try {
    const f = await api("/api/facets");
    const folder = $("f-folder"), camera = $("f-camera");
    for (const x of f.folders) folder.add(new Option(`${x.value} (${x.count})`, x.value));
    for (const x of f.cameras) camera.add(new Option(`${x.value} (${x.count})`, x.value));
    folder.value = state.filters.folder;
    camera.value = state.filters.camera;
  } catch (e) { /* filters stay usable as free text in the URL */ }
}

function renderChips() {
  const chips = $("chips");
  chips.replaceChildren();
  const add = (label, clear) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = "chip"; b.textContent = label;
    b.setAttribute("aria-label", `Remove filter: ${label}`);
    b.addEventListener("click", clear);
    chips.appendChild(b);
  };
  if (state.mode?.kind === "similar") add(`Like ${state.mode.name}`, () => search(null));
  if (state.mode?.kind === "image") add(`Like ${state.mode.file.name || "pasted image"}`, () => search(null));
  const f = state.filters;
  if (f.after) add(`From ${f.after}`, () => setFilter("after", ""));
  if (f.before) add(`Until ${f.before}`, () => setFilter("before", ""));
  if (f.folder) add(`In ${f.folder.split("/").pop() || f.folder}`, () => setFilter("folder", ""));
  if (f.camera) add(f.camera, () => setFilter("camera", ""));
}

function setFilter(key, value) {
  state.filters[key] = value;
  const input = { after: "f-after", before: "f-before", folder: "f-folder", camera: "f-camera" }[key];
  $(input).value = value;
  rerun();
}

function rerun() {
  if (state.mode) search(state.mode); else renderChips();
  updateUrl();
}

function updateUrl() {
  if (location.pathname !== "/") return;
  const p = new URLSearchParams();
  if (state.mode?.kind === "text") p.set("q", state.mode.q);
  if (state.mode?.kind === "similar") p.set("like", String(state.mode.id));
  if (state.sort !== "relevance") p.set("sort", state.sort);
  for (const [k, v] of Object.entries(state.filters)) if (v) p.set(k, v);
  const url = p.toString() ? `/?${p}` : "/";
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}

function setSort(sort) {
  state.sort = sort;
  for (const b of document.querySelectorAll("[data-sort]")) b.setAttribute("aria-pressed", String(b.dataset.sort === sort));
  rerun();
}

// ---------- image search: picker, drop, paste ----------
function searchByFile(file) {
  if (!file || !file.type.startsWith("image/")) { toast("That is not an image file."); return; }
  $("q").value = "";
  search({ kind: "image", file });
}

// ---------- status view ----------
async function showStatus() {
  $("search-view").hidden = true;
  $("status-view").hidden = false;
  const tick = async () => {
    if ($("status-view").hidden) return;
    try {
      const s = await api("/api/status");
      const list = $("status-list");
      const rows = [
        ["Photos", `${s.stats.photos.toLocaleString()} (${s.stats.embedded.toLocaleString()} searchable)`],
        ["Model", `${s.model.name} (${s.model.dim}-d)`],
        ["Library", s.library],
        ["Generation", String(s.stats.generation)],
        ["On disk", `${mb(s.stats.bytes_database)} database · ${mb(s.stats.bytes_thumbnails)} thumbnails · ${mb(s.stats.bytes_graph)} graph · ${mb(s.stats.bytes_keywords)} keywords`],
        ["Server", `Glimpse ${s.version}, up ${Math.round(s.uptime_s)} s`],
      ];
      list.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
      const ix = s.indexing;
      const box = $("indexing");
      if (!ix.watching) {
        box.replaceChildren(el("p", "Not watching folders. Run `glimpse serve --watch DIR` (or `glimpse index DIR`) to add photos."));
      } else {
        const parts = [el("p", `Watching ${ix.roots.join(", ")} — ${ix.state}`)];
        if (ix.state === "indexing" && ix.total > 0) {
          const p = document.createElement("progress");
          p.max = ix.total; p.value = ix.done;
          parts.push(p, el("p", `${ix.done} of ${ix.total} files`));
        }
        if (ix.last_run) parts.push(el("p", `Last run: ${ix.last_run.indexed} indexed, ${ix.last_run.updated} updated, ${ix.last_run.removed} removed, ${ix.last_run.failed} failed in ${ix.last_run.seconds.toFixed(1)} s`));
        if (ix.last_error) parts.push(el("p", `Last error: ${ix.last_error}`));
        box.replaceChildren(...parts);
      }
      const failures = Object.entries(s.stats.failures);
      $("failure-list").replaceChildren(...(failures.length ? failures.flatMap(([k, n]) => [el("dt", k.replaceAll("_", " ")), el("dd", String(n))]) : [el("dt", "None"), el("dd", "")]));
    } catch (e) { showError(e); }
    setTimeout(tick, 2000);
  };
  tick();
}
const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;
function el(tag, text) { const e = document.createElement(tag); e.textContent = text; return e; }

// ---------- theme ----------
function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme; else delete document.documentElement.dataset.theme;
}
function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : window.matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem("glimpse-theme", next);
  applyTheme(next);
}

// ---------- keyboard ----------
function onKey(e) {
  const lightbox = !$("lightbox").hidden;
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName);
  if (lightbox) {
    if (e.key === "Escape") { e.preventDefault(); closeLightbox(); }
    else if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
    else if (e.key === "m") { e.preventDefault(); moreLikeThis(); }
    return;
  }
  if (e.key === "/" && !typing) { e.preventDefault(); $("q").focus(); return; }
  if (e.key === "Escape" && document.activeElement === $("q")) { $("q").blur(); return; }
  const t = document.activeElement;
  if (t?.classList?.contains("tile")) {
    const i = Number(t.dataset.index);
    const tiles = $("grid").children;
    const move = (j) => { if (tiles[j]) { e.preventDefault(); tiles[j].focus(); } };
    if (e.key === "ArrowRight") move(i + 1);
    else if (e.key === "ArrowLeft") move(i - 1);
    else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      const r = t.getBoundingClientRect();
      const down = e.key === "ArrowDown";
      let best = null, bestD = Infinity;
      for (const other of tiles) {
        const o = other.getBoundingClientRect();
        if (down ? o.top <= r.top + 2 : o.top >= r.top - 2) continue;
        const d = Math.abs(o.top - r.top) * 10 + Math.abs(o.left + o.width / 2 - (r.left + r.width / 2));
        if (d < bestD) { bestD = d; best = other; }
      }
      if (best) { e.preventDefault(); best.focus(); }
    } else if (e.key === "m") { state.current = i; moreLikeThis(); }
  } else if (e.key === "ArrowDown" && document.activeElement === $("q") && $("grid").children[0]) {
    e.preventDefault(); $("grid").children[0].focus();
  }
}

function sentinelVisible() {
  const r = $("sentinel").getBoundingClientRect();
  return r.top < window.innerHeight + 800;
}

// ---------- start ----------
function start() {
  applyTheme(localStorage.getItem("glimpse-theme"));
  const url = new URLSearchParams(location.search);
  for (const k of Object.keys(state.filters)) state.filters[k] = url.get(k) || "";
  $("f-after").value = state.filters.after;
  $("f-before").value = state.filters.before;
  if (url.get("sort") === "date") state.sort = "date";
  for (const b of document.querySelectorAll("[data-sort]")) b.setAttribute("aria-pressed", String(b.dataset.sort === state.sort));
  if (Object.values(state.filters).some(Boolean)) { $("filters").hidden = false; $("filters-toggle").setAttribute("aria-expanded", "true"); }

  let debounce;
  $("q").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      const q = $("q").value.trim();
      if (q) search({ kind: "text", q }); else if (state.mode?.kind === "text") search(null);
    }, 250);
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    clearTimeout(debounce);
    const q = $("q").value.trim();
    if (q) search({ kind: "text", q });
  });
  $("upload-button").addEventListener("click", () => $("upload-input").click());
  $("upload-input").addEventListener("change", (e) => { searchByFile(e.target.files[0]); e.target.value = ""; });
  $("filters-toggle").addEventListener("click", () => {
    const f = $("filters"); f.hidden = !f.hidden;
    $("filters-toggle").setAttribute("aria-expanded", String(!f.hidden));
  });
  for (const [id, key] of [["f-after", "after"], ["f-before", "before"], ["f-folder", "folder"], ["f-camera", "camera"]]) {
    $(id).addEventListener("change", (e) => { state.filters[key] = e.target.value; rerun(); });
  }
  for (const b of document.querySelectorAll("[data-sort]")) b.addEventListener("click", () => setSort(b.dataset.sort));
  $("theme-toggle").addEventListener("click", toggleTheme);
  $("show-weak").addEventListener("click", () => { state.showWeak = true; render(); loadMore(); });
  for (const b of $("examples").querySelectorAll("button")) {
    b.addEventListener("click", () => { $("q").value = b.textContent; search({ kind: "text", q: b.textContent }); });
  }
  $("lb-close").addEventListener("click", closeLightbox);
  $("lb-prev").addEventListener("click", () => step(-1));
  $("lb-next").addEventListener("click", () => step(1));
  $("more-like-this").addEventListener("click", moreLikeThis);
  $("lightbox").addEventListener("click", (e) => { if (e.target === $("lightbox") || e.target.classList.contains("lb-figure")) closeLightbox(); });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { clearTimeout(layout.timer); layout.timer = setTimeout(layout, 100); });

  // Drop or paste a photo anywhere.
  let depth = 0;
  window.addEventListener("dragenter", (e) => { if (e.dataTransfer?.types.includes("Files")) { depth++; $("drop").hidden = false; } });
  window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("drop").hidden = true; });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { e.preventDefault(); depth = 0; $("drop").hidden = true; searchByFile(e.dataTransfer?.files[0]); });
  window.addEventListener("paste", (e) => {
    const item = Array.from(e.clipboardData?.items || []).find((i) => i.type.startsWith("image/"));
    if (item) { e.preventDefault(); searchByFile(item.getAsFile()); }
  });

  new IntersectionObserver((entries) => {
    if (entries.some((x) => x.isIntersecting) && wantsMore()) loadMore();
  }, { rootMargin: "800px" }).observe($("sentinel"));

  if (location.pathname === "/status") { showStatus(); return; }
  loadFacets();
  if (url.get("q")) { $("q").value = url.get("q"); search({ kind: "text", q: url.get("q") }); }
  else if (url.get("like")) search({ kind: "similar", id: Number(url.get("like")), name: `photo ${url.get("like")}` });
  else $("q").focus();
}

start();
