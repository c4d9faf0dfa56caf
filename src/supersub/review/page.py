"""The review page: one HTML document with its CSS and script inline (no framework, nothing fetched from another
host). The script reads the server's JSON, keeps the edits in the page until a save succeeds, and shows every
refusal of the server in the message bar as it is."""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>supersub review</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 12px 24px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 2px 0 0; color: #c9d1d9; word-break: break-all; font-size: 12px; }
nav { padding: 8px 24px; background: #eaeef2; border-bottom: 1px solid #d0d7de; display: flex; gap: 8px; align-items: center; }
nav button.tab[aria-selected="true"] { background: #0969da; color: #fff; }
button { font: inherit; padding: 4px 12px; border: 1px solid #d0d7de; border-radius: 6px; background: #fff; cursor: pointer; }
button.primary { background: #1f883d; color: #fff; border-color: #1a7f37; }
#message { margin: 8px 24px; padding: 8px 14px; border-radius: 6px; display: none; white-space: pre-wrap; }
#message.error { display: block; background: #ffebe9; border: 1px solid #cf222e; }
#message.ok { display: block; background: #dafbe1; border: 1px solid #1a7f37; }
main { padding: 8px 24px 40px; }
.controls { display: flex; gap: 16px; align-items: center; margin: 8px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 8px; }
.tile { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 4px; font-size: 11px; overflow-wrap: anywhere; }
.tile img { width: 128px; height: 128px; object-fit: contain; display: block; margin: 0 auto 4px; background: #eaeef2; }
.tile.novel_super { border-color: #cf222e; } .tile.novel_sub { border-color: #bf8700; }
.tile.out { opacity: 0.45; } .tile.moved { border-style: dashed; }
.tile select { width: 100%; font-size: 11px; }
.lab { color: #57606a; }
section.cluster { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 16px 12px; margin: 12px 0; }
section.cluster h2 { font-size: 16px; margin: 4px 0 8px; }
section.cluster label { margin-right: 12px; }
section.cluster input { font: inherit; padding: 2px 6px; width: 14em; }
</style>
</head>
<body>
<header><h1>supersub review</h1><p id="where"></p></header>
<nav>
<button class="tab" id="tab-predictions" aria-selected="true">Predictions</button>
<button class="tab" id="tab-clusters" aria-selected="false">Clusters</button>
<span style="flex:1"></span>
<button class="primary" id="save">Save labels</button>
</nav>
<div id="message" role="alert"></div>
<main>
<div id="view-predictions">
<div class="controls">
<label>Decision <select id="decision">
<option value="all">all</option><option value="seen">seen</option>
<option value="novel_super">novel superclass</option><option value="novel_sub">novel subclass</option>
</select></label>
<label>Sort <select id="sort">
<option value="confidence">least confident first</option><option value="confidence-desc">most confident first</option>
<option value="super_conf">superclass score</option><option value="sub_conf">subclass score</option>
<option value="name">name</option>
</select></label>
<span id="count"></span>
</div>
<div class="grid" id="predictions"></div>
</div>
<div id="view-clusters" hidden>
<p>Name each cluster: a new subclass under its superclass, or, for a novel superclass, a new superclass with its
first subclass (clusters given the same names are merged). Move a wrong image to another cluster, leave it out,
or mark it as a known class; then save.</p>
<div id="clusters"></div>
</div>
</main>
<script>
"use strict";
const SHOWN = 48;
let version = "none", known = [], clusters = [], items = {}, names = {}, placement = {}, retrain = "";

function message(text, kind) {
  const m = document.getElementById("message");
  m.textContent = text; m.className = kind;
}
async function getJSON(url, options) {
  let response;
  try { response = await fetch(url, options); }
  catch (e) { throw new Error("the review server does not answer (was 'supersub review' stopped?)"); }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && (body.error || JSON.stringify(body.detail))) || ("HTTP " + response.status));
  return body;
}
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function tile(item, extra) {
  const t = el("div", {class: "tile " + item.decision, "data-id": item.id, "data-decision": item.decision, title: item.image});
  t.append(el("img", {src: "/image/" + item.id, alt: item.image, loading: "lazy"}));
  t.append(el("div", {text: item.image}));
  t.append(el("div", {}, el("span", {class: "lab", text: "super "}), item.superclass + " (" + item.super_prob.toFixed(3) + ")"));
  t.append(el("div", {}, el("span", {class: "lab", text: "sub "}), item.subclass + " (" + item.sub_prob.toFixed(3) + ")"));
  t.append(el("div", {class: "lab", text: "scores " + item.super_conf.toFixed(3) + " / " + item.sub_conf.toFixed(3)}));
  if (extra) t.append(extra);
  return t;
}
async function showPredictions() {
  const decision = document.getElementById("decision").value;
  let sort = document.getElementById("sort").value, descending = false;
  if (sort.endsWith("-desc")) { sort = sort.slice(0, -5); descending = true; }
  try {
    const rows = await getJSON("/api/predictions?decision=" + decision + "&sort=" + sort + "&descending=" + descending);
    const grid = document.getElementById("predictions");
    grid.replaceChildren(...rows.slice(0, 400).map(r => tile(r)));
    document.getElementById("count").textContent = rows.length + " images" + (rows.length > 400 ? " (first 400 shown)" : "");
  } catch (e) { message(e.message, "error"); }
}
function placeOf(id) { return placement[id] || {kind: "out"}; }
function moveSelect(item, home) {
  const s = el("select", {class: "move", "aria-label": "where " + item.image + " goes"});
  s.append(el("option", {value: "c:" + home, text: "in cluster " + home}));
  s.append(el("option", {value: "out", text: "leave out"}));
  for (const c of clusters) if (c.cluster !== home) s.append(el("option", {value: "c:" + c.cluster, text: "move to cluster " + c.cluster}));
  known.forEach((k, i) => s.append(el("option", {value: "k:" + i, text: "known: " + k.superclass + " / " + k.subclass})));
  const p = placeOf(item.id);
  s.value = p.kind === "cluster" ? "c:" + p.cluster : p.kind === "known" ? "k:" + p.known : "out";
  s.addEventListener("change", () => {
    const v = s.value;
    placement[item.id] = v === "out" ? {kind: "out"} : v.startsWith("k:") ? {kind: "known", known: +v.slice(2)}
      : {kind: "cluster", cluster: +v.slice(2)};
    s.closest(".tile").classList.toggle("out", v === "out");
    s.closest(".tile").classList.toggle("moved", v !== "c:" + home && v !== "out");
  });
  return s;
}
function renderClusters() {
  const box = document.getElementById("clusters");
  box.replaceChildren();
  if (!clusters.length) { box.append(el("p", {text: "No discovered clusters: run 'supersub discover' and pass --discovered."})); return; }
  for (const c of clusters) {
    const sec = el("section", {class: "cluster", "data-cluster": c.cluster});
    const where = c.level === "superclass" ? "a novel superclass" : "a novel subclass of " + c.predicted;
    sec.append(el("h2", {text: "Cluster " + c.cluster + ": " + c.members.length + " images, " + where}));
    for (const field of ["superclass", "subclass"]) {
      const input = el("input", {class: field, name: field, value: names[c.cluster][field], "aria-label": field + " of cluster " + c.cluster});
      input.addEventListener("input", () => { names[c.cluster][field] = input.value; });
      sec.append(el("label", {}, field + " ", input));
    }
    const grid = el("div", {class: "grid"});
    const add = (from, to) => c.members.slice(from, to).forEach(id => {
      const t = tile(items[id], moveSelect(items[id], c.cluster));
      const p = placeOf(id);
      if (p.kind === "out") t.classList.add("out");
      else if (!(p.kind === "cluster" && p.cluster === c.cluster)) t.classList.add("moved");
      grid.append(t);
    });
    add(0, SHOWN);
    sec.append(grid);
    if (c.members.length > SHOWN) {
      const more = el("button", {class: "more", text: "show all " + c.members.length});
      more.addEventListener("click", () => { add(SHOWN, c.members.length); more.remove(); });
      sec.append(more);
    }
    box.append(sec);
  }
}
async function load() {
  try {
    const state = await getJSON("/api/state");
    const all = await getJSON("/api/predictions?decision=all");
    version = state.version; known = state.known; clusters = state.clusters; retrain = state.retrain;
    items = {}; for (const r of all) items[r.id] = r;
    const byPath = {}; for (const r of all) byPath[r.path] = r.id;
    names = {}; for (const c of clusters) names[c.cluster] = {superclass: c.superclass, subclass: c.subclass};
    placement = {};
    for (const [path, a] of Object.entries(state.assignments)) {
      const id = byPath[path];
      if (id === undefined) continue;
      if (a.cluster !== "") placement[id] = {kind: "cluster", cluster: +a.cluster};
      else {
        const k = known.findIndex(x => x.superclass === a.superclass && x.subclass === a.subclass);
        placement[id] = k >= 0 ? {kind: "known", known: k} : {kind: "out"};
      }
    }
    document.getElementById("where").textContent = "run " + state.run + " · labels " + state.labels + " · " + state.items + " images";
    renderClusters();
    await showPredictions();
  } catch (e) { message(e.message, "error"); }
}
async function save() {
  const rows = [];
  for (const [id, p] of Object.entries(placement)) {
    const path = items[id].path;
    if (p.kind === "cluster") rows.push({image: path, superclass: names[p.cluster].superclass, subclass: names[p.cluster].subclass, cluster: String(p.cluster)});
    else if (p.kind === "known") rows.push({image: path, superclass: known[p.known].superclass, subclass: known[p.known].subclass, cluster: ""});
  }
  try {
    const r = await getJSON("/api/save", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({version, rows})});
    version = r.version;
    message("Saved " + r.rows + " labelled images to " + r.path + ". Retrain with:\\n" + r.retrain, "ok");
  } catch (e) { message("Not saved: " + e.message, "error"); }
}
function tab(name) {
  for (const n of ["predictions", "clusters"]) {
    document.getElementById("view-" + n).hidden = n !== name;
    document.getElementById("tab-" + n).setAttribute("aria-selected", String(n === name));
  }
}
document.getElementById("tab-predictions").addEventListener("click", () => tab("predictions"));
document.getElementById("tab-clusters").addEventListener("click", () => tab("clusters"));
document.getElementById("decision").addEventListener("change", showPredictions);
document.getElementById("sort").addEventListener("change", showPredictions);
document.getElementById("save").addEventListener("click", save);
load();
</script>
</body>
</html>
"""
