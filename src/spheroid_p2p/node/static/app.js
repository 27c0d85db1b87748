// The live swarm page: asks /api/v1/swarm every two seconds and draws plain SVG.
"use strict";
const API = "/api/v1/swarm";
const REFRESH_MS = 2000;
const COLORS = ["#2266cc", "#cc5522", "#229944", "#9933aa", "#aa8800", "#008899", "#cc2266", "#555555"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function rows(tableId, data, cells) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...data.map((item) => {
    const tr = el("tr");
    for (const cell of cells(item)) {
      const td = el("td");
      if (cell instanceof Node) td.append(cell); else td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }));
}

function owners(list) {
  const span = el("span");
  for (const o of list) {
    const tag = el("span", { class: "owner" + (o.me ? " me" : ""), title: `${o.id} ${o.addr} v${o.version}` }, o.peer);
    tag.dataset.peer = o.peer;
    span.append(tag);
  }
  if (!list.length) span.textContent = "-";
  return span;
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// series: [{name, points: [[t, y], ...]}]; draws axes with min/max labels and one polyline each
function chart(svgId, series, unit, decimals = 3) {
  const svg = document.getElementById(svgId);
  const [w, h] = [640, Number(svg.getAttribute("viewBox").split(" ")[3])];
  const pad = { l: 48, r: 90, t: 10, b: 20 };
  const all = series.flatMap((s) => s.points);
  svg.replaceChildren();
  svg.dataset.points = String(all.length);
  if (!all.length) {
    svg.append(el("svg:text", { x: pad.l, y: h / 2 }, "no data yet"));
    return;
  }
  let [t0, t1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (t1 === t0) t1 = t0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - ((v - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  svg.append(el("svg:line", { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: "#99a" }));
  svg.append(el("svg:line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b, stroke: "#99a" }));
  svg.append(el("svg:text", { x: 2, y: pad.t + 8 }, `${y1.toFixed(decimals)}${unit}`));
  svg.append(el("svg:text", { x: 2, y: h - pad.b }, `${y0.toFixed(decimals)}${unit}`));
  svg.append(el("svg:text", { x: pad.l, y: h - 4 }, new Date(t0 * 1000).toLocaleTimeString()));
  svg.append(el("svg:text", { x: w - pad.r - 50, y: h - 4 }, new Date(t1 * 1000).toLocaleTimeString()));
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.append(el("svg:polyline", { class: "line", points: pts, stroke: color, "data-series": s.name }));
    for (const p of s.points.slice(-60)) {
      svg.append(el("svg:circle", { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 2, fill: color, class: "point" }));
    }
    svg.append(el("svg:text", { x: w - pad.r + 6, y: pad.t + 12 + 12 * i, fill: color }, s.name));
  });
}

function render(data) {
  document.getElementById("node").textContent =
    `node ${data.node.peer} · ${data.node.agent} · up ${duration(data.node.uptime_s)} · listening on ${data.node.listen}`;
  rows("blocks", data.blocks, (b) => [
    String(b.block),
    b.newest_version ? `v${b.newest_version.version} (${b.newest_version.holders} holder${b.newest_version.holders === 1 ? "" : "s"})` : "-",
    owners(b.servers),
    owners(b.trainers),
  ]);
  document.getElementById("training-section").hidden = !data.training.length;
  rows("training", data.training, (j) => [
    String(j.block), `${j.step}/${j.total}`, j.loss.toFixed(3), j.steps_per_s.toFixed(2), duration(j.eta_s), String(j.version),
  ]);
  const ce = data.ce.length
    ? [{ name: "CE", points: data.ce.map((p) => [p.t, p.ce]) }]
    : data.training.map((j) => ({ name: `loss b${j.block}`, points: j.history.map((p) => [p.t, p.loss]) }));
  chart("ce-chart", ce, "");
  const blocks = [...new Set(data.versions.map((v) => v.block))].sort((a, b) => a - b);
  chart("round-chart", blocks.map((b) => ({
    name: `block ${b}`, points: data.versions.filter((v) => v.block === b).map((v) => [v.t, v.version]),
  })), "", 0);
  document.getElementById("rounds").hidden = !data.rounds.length;
  rows("rounds", data.rounds.slice().reverse().slice(0, 20), (r) => [
    new Date(r.time * 1000).toLocaleTimeString(),
    String(r.block),
    r.kind === "version" ? `version ${r.version} published` : `round ${r.round} shard ${r.shard} closed (${r.closed})`,
    (r.contributors || []).map((c) => c.peer).join(" ") || "-",
    (r.rejected || []).map((c) => `${c.peer} ${c.code}`).join(" ") || "-",
    (r.late || []).join(" ") || "-",
  ]);
  const hopNames = [...new Set(data.hops.map((h) => h.blocks))];
  chart("hop-chart", hopNames.map((name) => ({
    name: `blocks ${name}`, points: data.hops.filter((h) => h.blocks === name).map((h) => [h.t, h.ms]),
  })), " ms", 1);
  rows("connections", data.connections, (c) => [c.peer, c.addr, c.outbound ? "out" : "in", c.rtt_ms.toFixed(2)]);
  document.body.dataset.updated = String(data.time);
}

async function refresh() {
  try {
    const response = await fetch(API, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    document.getElementById("stale").hidden = true;
  } catch (err) {
    document.getElementById("stale").hidden = false;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
