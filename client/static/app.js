// The search page: plain DOM, no framework. Every query goes through run(); a newer query
// makes older answers stale, so a slow answer can never overwrite a fresh grid.
"use strict";

const $ = (id) => document.getElementById(id);
const grid = $("grid");
const message = $("message");
const title = $("results-title");

let seq = 0; // the latest query's number
let last = null; // the latest query, re-run when a filter changes
let controls = []; // one entry per tag: {key, kind, el | min, max, values}

function show(text, kind) {
  message.textContent = text;
  message.className = "message " + (kind || "info");
  message.hidden = !text;
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new Error("the search page's server is not answering (is `python -m client ui` running?)");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

// --- filters ------------------------------------------------------------------------------

function buildFilters(tags) {
  const box = $("filter-controls");
  box.replaceChildren();
  controls = [];
  for (const key of Object.keys(tags).sort()) {
    const summary = tags[key] || {};
    const id = "tag-" + key.replace(/[^A-Za-z0-9_-]/g, "_");
    const wrap = document.createElement("div");
    wrap.className = "filter";
    if (Array.isArray(summary.values)) {
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = key;
      const select = document.createElement("select");
      select.id = id;
      select.dataset.tag = key;
      select.append(new Option("any", ""));
      summary.values.forEach((v, i) => select.append(new Option(String(v), String(i))));
      select.addEventListener("change", rerun);
      wrap.append(label, select);
      controls.push({ key, kind: "values", el: select, values: summary.values });
    } else if (typeof summary.min === "number" && typeof summary.max === "number") {
      const fieldset = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = key;
      fieldset.append(legend);
      const bounds = {};
      for (const side of ["min", "max"]) {
        const label = document.createElement("label");
        label.htmlFor = `${id}-${side}`;
        label.textContent = side;
        const input = document.createElement("input");
        input.type = "number";
        input.step = "any";
        input.id = `${id}-${side}`;
        input.dataset.tag = key;
        input.placeholder = String(summary[side]);
        input.addEventListener("change", rerun);
        fieldset.append(label, input);
        bounds[side] = input;
      }
      wrap.append(fieldset);
      controls.push({ key, kind: "range", min: bounds.min, max: bounds.max });
    } else {
      continue;
    }
    box.append(wrap);
  }
}

// The filter the controls and the JSON box describe together; throws on bad JSON.
function currentFilter() {
  const filter = {};
  for (const c of controls) {
    if (c.kind === "values" && c.el.value !== "") {
      filter[c.key] = c.values[Number(c.el.value)];
    } else if (c.kind === "range") {
      const range = {};
      if (c.min.value !== "") range.$gte = Number(c.min.value);
      if (c.max.value !== "") range.$lte = Number(c.max.value);
      if (Object.keys(range).length) filter[c.key] = range;
    }
  }
  const raw = $("filter-json").value.trim();
  if (raw) {
    let extra;
    try {
      extra = JSON.parse(raw);
    } catch (e) {
      throw new Error("filter as JSON: not valid JSON (" + e.message + ")");
    }
    if (extra === null || typeof extra !== "object" || Array.isArray(extra)) {
      throw new Error('filter as JSON: an object of tag conditions, e.g. {"colour": "red"}');
    }
    Object.assign(filter, extra);
  }
  return Object.keys(filter).length ? filter : null;
}

function rerun() {
  if (last) run(last);
}

// --- queries ------------------------------------------------------------------------------

function limit() {
  const n = Number($("limit").value);
  return Number.isInteger(n) && n >= 1 ? Math.min(n, 100) : 12;
}

// query: {label, text} | {label, like} | {label, file}
async function run(query) {
  last = query;
  const mine = ++seq;
  const started = performance.now();
  grid.setAttribute("aria-busy", "true");
  let filter;
  try {
    filter = currentFilter();
  } catch (e) {
    return fail(mine, e);
  }
  let answer;
  try {
    if (query.file) {
      const params = new URLSearchParams({ limit: String(limit()) });
      if (filter) params.set("filter", JSON.stringify(filter));
      answer = await api("/api/search_image?" + params, {
        method: "POST",
        headers: { "Content-Type": query.file.type || "application/octet-stream" },
        body: query.file,
      });
    } else {
      const body = { limit: limit(), filter };
      if (query.like !== undefined) body.like = query.like;
      else body.text = query.text;
      answer = await api("/api/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    }
  } catch (e) {
    return fail(mine, e);
  }
  if (mine !== seq) return; // a newer query is under way
  render(answer.hits, query.label, filter);
  // after the browser has laid out and painted the new grid
  requestAnimationFrame(() =>
    setTimeout(() => {
      if (mine !== seq) return;
      grid.dataset.renderMs = (performance.now() - started).toFixed(1);
      grid.dataset.seq = String(mine);
      grid.removeAttribute("aria-busy");
    }, 0),
  );
}

function fail(mine, error) {
  if (mine !== seq) return;
  show(error.message, "error");
  grid.dataset.seq = String(mine);
  grid.removeAttribute("aria-busy");
}

function render(hits, label, filter) {
  title.textContent = `${hits.length} result${hits.length === 1 ? "" : "s"} for ${label}`;
  if (!hits.length) {
    show(filter ? "No results: loosen or clear the filters." : "No results.", "info");
  } else {
    show("", "info");
  }
  grid.replaceChildren(...hits.map(card));
}

function card(hit) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.id = hit.id;
  const caption = hit.text || hit.id;
  if (hit.thumbnail) {
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = caption;
    img.loading = "lazy";
    li.append(img);
  } else {
    const none = document.createElement("div");
    none.className = "noimage";
    none.textContent = "no image";
    li.append(none);
  }
  const text = document.createElement("p");
  text.className = "caption";
  text.textContent = hit.text || "";
  const meta = document.createElement("p");
  meta.className = "meta";
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = hit.id;
  id.title = hit.id;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  score.title = "cosine similarity";
  meta.append(id, score);
  const tags = Object.entries(hit.tags || {});
  const tagLine = document.createElement("p");
  tagLine.className = "tags";
  tagLine.textContent = tags.map(([k, v]) => `${k}: ${v}`).join(" · ");
  const more = document.createElement("button");
  more.type = "button";
  more.className = "more";
  more.textContent = "More like this";
  more.setAttribute("aria-label", `More like ${caption}`);
  more.addEventListener("click", () => run({ label: `images like ${hit.id}`, like: hit.id }));
  li.append(text, meta, tagLine, more);
  return li;
}

// --- wiring -------------------------------------------------------------------------------

$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (!text) {
    show("Type what you are looking for, or drop an image.", "info");
    return;
  }
  run({ label: `“${text}”`, text });
});

function searchFile(file) {
  if (file) run({ label: `the image ${file.name}`, file });
}

$("image").addEventListener("change", (event) => {
  searchFile(event.target.files[0]);
  event.target.value = ""; // the same file again is a new search
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchFile(event.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("image").click();
  }
});

// Enter in a filter box applies it (the form has no submit button, so no implicit submit).
$("filters").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.target.tagName === "INPUT") {
    event.preventDefault();
    rerun();
  }
});
$("filter-json").addEventListener("change", rerun);
$("clear-filters").addEventListener("click", () => {
  for (const c of controls) {
    if (c.kind === "values") c.el.value = "";
    else c.min.value = c.max.value = "";
  }
  $("filter-json").value = "";
  rerun();
});

async function start() {
  let status;
  try {
    status = await api("/api/status");
  } catch (e) {
    show(e.message, "error");
    document.body.dataset.ready = "true";
    return;
  }
  $("count").textContent = `${status.count} image${status.count === 1 ? "" : "s"} indexed`;
  buildFilters(status.tags || {});
  $("filters").hidden = false;
  if (status.warning) show(status.warning, "error");
  else if (!status.count) show(status.empty_hint, "info");
  document.body.dataset.ready = "true";
}

start();
