// The live dashboard's script: polls dashboard/data (samples newer than those it holds),
// keeps the window the API keeps, shows the current figures and draws the charts with
// uPlot (static/vendor/, loaded before this file). Figures carry their raw number in
// data-value, for whoever reads the page by program (the browser test does).
"use strict";

const COLORS = {};
for (const k of ["events", "labels", "scores", "metric", "p50", "p99", "drift", "promotion",
                 "grid", "muted", "text"]) {
  COLORS[k] = getComputedStyle(document.documentElement).getPropertyValue("--" + k).trim();
}
const METRIC_NAMES = {roc_auc: "ROC AUC", log_loss: "log loss", accuracy: "accuracy",
                      mae: "MAE", rmse: "RMSE"};
const BOUNDED_METRICS = ["roc_auc", "accuracy"];  // within [0, 1]: the chart keeps to it
const CHART_HEIGHT = 190;
const state = {since: null, now: null, interval: 2, window: 1800,
               api: {t: [], requests: [], p50: [], p99: []}, pipelines: {}};
const charts = {};  // element id -> uPlot

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function fmtRate(v) {
  if (v === null || v === undefined) return "—";
  if (v < 10) return v.toFixed(1);
  return Math.round(v).toLocaleString("en-US");
}
function fmtCount(v) {
  return v === null || v === undefined ? "—" : Math.round(v).toLocaleString("en-US");
}
function fmtMs(v) {
  if (v === null || v === undefined) return "—";
  return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v)) + " ms";
}
function fmtMetric(v) { return v === null || v === undefined ? "—" : v.toFixed(3); }
function fmtNum(v) {  // an axis tick: short
  const a = Math.abs(v);
  if (a >= 1000) return (v / 1000).toFixed(a >= 10000 ? 0 : 1) + "k";
  if (a >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(a >= 1 ? 1 : 2);
}
function fmtTime(t, short) {
  return new Date(t * 1000).toLocaleTimeString("en-GB",
                                               short ? {hour: "2-digit", minute: "2-digit"} : {});
}

function show(id, value, text) {
  const node = document.getElementById(id);
  if (!node) return;
  node.textContent = text;
  node.dataset.value = value === null || value === undefined ? "" : String(value);
}

// Append the samples newer than what we hold, and forget what left the window.
function merge(series, incoming, names, now, window) {
  const last = series.t.length ? series.t[series.t.length - 1] : -Infinity;
  incoming.t.forEach((t, i) => {
    if (t <= last) return;
    for (const n of names) series[n].push(incoming[n][i]);
  });
  let drop = 0;
  while (drop < series.t.length && series.t[drop] < now - window) drop++;
  if (drop) for (const n of names) series[n].splice(0, drop);
}

function pipelineCard(name, p) {
  const metric = METRIC_NAMES[p.metric] || p.metric;
  const stat = (key, label, hint, mono) => el("div", {class: "stat"},
    el("div", {class: "label"}, label),
    el("div", {class: "value" + (mono ? " mono" : ""), id: `${name}-${key}`,
               "data-value": ""}, "—"),
    ...(hint ? [el("div", {class: "hint"}, hint)] : []));
  return el("section", {class: "panel idle", id: `pipeline-${name}`},
    el("h2", {}, name, el("span", {class: "sub", id: `${name}-sub`}, `${p.task} · ${metric}`)),
    el("div", {class: "stats"},
       stat("version", "model version (serving)", "", true),
       stat("events-rate", "events/s (worker)", "consumed, dead letters included"),
       stat("labels-rate", "labels learned/s", "predict first, then learn"),
       stat("learned", "labels learned", "by the online model, all revisions"),
       stat("api-rate", "API scores/s", "champion and challenger"),
       stat("metric", `${metric} (prequential)`,
            (p.lower_is_better ? "lower is better; " : "higher is better; ")
            + "current revision, rolling"),
       stat("drifts", "drift detections", "since the worker started"),
       stat("promotions", "promotions", "since the worker started")),
    el("div", {class: "charts"},
       el("div", {class: "chart"}, el("h3", {}, "Throughput (per second)"),
          el("div", {class: "plot", id: `${name}-throughput-chart`})),
       el("div", {class: "chart"}, el("h3", {}, `Prequential ${metric}, current revision`),
          el("div", {class: "legend"},
             el("span", {}, el("i", {class: "drift"}), "drift detected"),
             el("span", {}, el("i", {class: "promotion"}), "model promoted")),
          el("div", {class: "plot", id: `${name}-metric-chart`}))));
}

function ingest(d) {
  state.now = d.now; state.interval = d.interval || 2; state.window = d.window || 1800;
  if (d.now === null) return;
  merge(state.api, d.api.series, ["t", "requests", "p50", "p99"], d.now, state.window);
  for (const [name, p] of Object.entries(d.pipelines)) {
    let s = state.pipelines[name];
    if (!s) {
      s = state.pipelines[name] = {
        series: {t: [], events: [], labels: [], scores: [], metric: []}, markers: [],
        card: pipelineCard(name, p)};
      document.getElementById("pipelines").append(s.card);
    }
    s.info = p;
    merge(s.series, p.series, ["t", "events", "labels", "scores", "metric"], d.now,
          state.window);
    const lastMark = s.markers.length ? s.markers[s.markers.length - 1].t : -Infinity;
    for (const mk of p.markers) if (mk.t > lastMark) s.markers.push(mk);
    s.markers = s.markers.filter(mk => mk.t >= d.now - state.window);
  }
  state.since = d.now;
}

// 2: events or scores in the window; 1: a model that has learned; 0: idle (folded).
function rank(s) {
  if (s.series.events.some(v => v > 0) || s.series.scores.some(v => v > 0)) return 2;
  return (s.info.current.learned || 0) > 0 ? 1 : 0;
}

function render(d) {
  const api = d.api.current;
  show("api-rate", api.requests, fmtRate(api.requests));
  show("api-p50", api.p50, fmtMs(api.p50));
  show("api-p99", api.p99, fmtMs(api.p99));
  const w = d.worker, r = d.redis;
  document.getElementById("worker-dot").className = "dot " + (w.up ? "ok" : "bad");
  document.getElementById("worker-status").textContent =
    (w.up ? "up" : "down") + " · " + w.url.replace(/^https?:\/\//, "").replace(/\/metrics$/, "")
    + (w.up || !w.error ? "" : " (" + w.error + ")");
  document.getElementById("redis-dot").className = "dot " + (r.up ? "ok" : "bad");
  document.getElementById("redis-status").textContent = r.up ? "ok" : (r.error || "down");
  document.getElementById("updated").textContent =
    d.now ? new Date(d.now * 1000).toLocaleTimeString("en-GB") : "not yet sampled";
  document.getElementById("footer").textContent =
    `Sampled every ${state.interval} s by API process ${d.process.pid}`
    + (d.process.pool ? " (figures of the API are the pool's)" : "")
    + `; the last ${Math.round(state.window / 60)} minutes are kept.`;
  const names = Object.keys(state.pipelines);
  names.sort((a, b) => rank(state.pipelines[b]) - rank(state.pipelines[a]));
  const holder = document.getElementById("pipelines");
  for (const name of names) {
    const s = state.pipelines[name], c = s.info.current, t = s.info.totals;
    holder.append(s.card);  // keeps the order: busy pipelines first, idle ones last
    s.card.classList.toggle("idle", rank(s) === 0);
    show(`${name}-version`, c.version, c.version || "—");
    show(`${name}-events-rate`, c.events, fmtRate(c.events));
    show(`${name}-labels-rate`, c.labels, fmtRate(c.labels));
    show(`${name}-learned`, c.learned, fmtCount(c.learned));
    show(`${name}-api-rate`, c.scores, fmtRate(c.scores));
    show(`${name}-metric`, c.metric, fmtMetric(c.metric));
    show(`${name}-drifts`, t.drift, fmtCount(t.drift));
    show(`${name}-promotions`, t.promotions, fmtCount(t.promotions));
    const metric = METRIC_NAMES[s.info.metric] || s.info.metric;
    document.getElementById(`${name}-sub`).textContent = `${s.info.task} · ${metric}`
      + (c.revision !== null && c.revision !== undefined
         ? ` · registry revision ${c.revision}` : "")
      + (c.metric_labels ? ` · ${fmtCount(c.metric_labels)} labels scored by it` : "")
      + (rank(s) ? "" : ` · idle: no events yet (model ${c.version || "none"})`);
  }
  draw();
}

// ---- charts (uPlot) ------------------------------------------------------------------------

// Every chart spans the same time: the oldest sample held (at least a minute) to now.
function xRange() {
  const t1 = state.now || Date.now() / 1000;
  let first = state.api.t.length ? state.api.t[0] : t1;
  for (const s of Object.values(state.pipelines)) if (s.series.t.length)
    first = Math.min(first, s.series.t[0]);
  return [Math.min(first, t1 - 60), t1];
}

// A y range around the data, padded to round numbers by uPlot; from zero for rates,
// within [floor, ceil] for a bounded metric.
function yRange(o) {
  return (u, min, max) => {
    if (min === null || max === null || !(min <= max)) return [o.floor ?? 0, o.ceil ?? 1];
    if (o.fromZero) min = Math.min(min, 0);
    if (max - min < 1e-9) max = min + (Math.abs(min) > 0 ? Math.abs(min) * 0.1 : 1);
    let [lo, hi] = uPlot.rangeNum(min, max, 0.08, !!o.fromZero);
    if (o.floor !== undefined) lo = Math.max(lo, o.floor);
    if (o.ceil !== undefined) hi = Math.min(hi, o.ceil);
    return [lo, hi];
  };
}

// Lines break where a sample is missing; a sample alone between gaps is drawn as a dot.
function lonePoints(u, si, show) {
  if (show) return null;
  const ys = u.data[si], idxs = [];
  for (let i = 0; i < ys.length; i++) {
    if (ys[i] !== null && ys[i - 1] == null && ys[i + 1] == null) idxs.push(i);
  }
  return idxs.length ? idxs : null;
}

// Drift detections and promotions: a dashed line, a triangle at the top, and a label on
// the first row where it overlaps no other label (uPlot's draw hook, canvas pixels).
function drawMarkers(u, markers) {
  const ctx = u.ctx, px = uPlot.pxRatio, {left, top, width, height} = u.bbox;
  const [t0, t1] = [u.scales.x.min, u.scales.x.max];
  const rows = [];
  ctx.save();
  ctx.font = `${11 * px}px system-ui, 'DejaVu Sans', sans-serif`;
  for (const mk of markers) {
    if (mk.t < t0 || mk.t > t1) continue;
    const color = mk.kind === "drift" ? COLORS.drift : COLORS.promotion;
    const x = Math.round(u.valToPos(mk.t, "x", true)) + 0.5;
    ctx.strokeStyle = color; ctx.lineWidth = 1.5 * px; ctx.setLineDash([4 * px, 3 * px]);
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = color; ctx.beginPath();
    ctx.moveTo(x - 5 * px, top - 7 * px); ctx.lineTo(x + 5 * px, top - 7 * px);
    ctx.lineTo(x, top); ctx.fill();
    const tw = ctx.measureText(mk.label).width;
    const lx = x + 6 * px + tw <= left + width ? x + 6 * px : x - 6 * px - tw;
    let row = rows.findIndex(right => right < lx - 4 * px);
    if (row < 0) { row = rows.length; rows.push(0); }
    rows[row] = lx + tw;
    const y = top - 13 * px + row * 14 * px;
    ctx.fillStyle = "rgba(255,255,255,0.85)";
    ctx.fillRect(lx - 2 * px, y - px, tw + 4 * px, 13 * px);
    ctx.fillStyle = color; ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText(mk.label, lx, y);
  }
  ctx.restore();
}

function drawWaiting(u) {
  const [t0, t1] = [u.scales.x.min, u.scales.x.max];
  const has = u.data.slice(1).some(ys => ys.some((v, i) => v !== null
                                                   && u.data[0][i] >= t0 && u.data[0][i] <= t1));
  if (has) return;
  const ctx = u.ctx, px = uPlot.pxRatio, {left, top, width, height} = u.bbox;
  ctx.save();
  ctx.fillStyle = COLORS.muted; ctx.textAlign = "center"; ctx.textBaseline = "middle";
  ctx.font = `${13 * px}px system-ui, 'DejaVu Sans', sans-serif`;
  ctx.fillText("waiting for data", left + width / 2, top + height / 2);
  ctx.restore();
}

// One chart: spec = {series: [[label, color], ...], y: yRange options, fmt: tick format,
// markers: () => markers (optional)}.
function makeChart(node, spec) {
  const axis = {stroke: COLORS.muted, grid: {stroke: COLORS.grid, width: 1},
                ticks: {stroke: COLORS.grid, width: 1}, font: "11px system-ui, sans-serif"};
  const value = (u, v) => v === null || v === undefined ? "—" : spec.fmt(v);
  return new uPlot({
    width: node.clientWidth, height: CHART_HEIGHT,
    padding: [spec.markers ? 26 : 12, 12, 0, 0],
    cursor: {sync: {key: "driftline"}, y: false, drag: {x: false, y: false}},
    scales: {x: {time: true, range: () => xRange()}, y: {range: yRange(spec.y)}},
    axes: [
      {...axis, values: (u, splits, i, space, incr) => splits.map(t => fmtTime(t, incr >= 60))},
      {...axis, size: 46, values: (u, splits) => splits.map(v => spec.fmt(v))},
    ],
    series: [
      {value: (u, t) => t === null || t === undefined ? "—" : fmtTime(t, false)},
      ...spec.series.map(([label, color]) => ({
        label, stroke: color, width: 2, value, spanGaps: false,
        points: {size: 5, fill: color, filter: lonePoints}})),
    ],
    hooks: {draw: [u => { drawWaiting(u); if (spec.markers) drawMarkers(u, spec.markers()); }]},
  }, null, node);
}

// Create a chart the first time its box has a width (a folded card's has none), then
// give it the latest data and the box's width.
function plot(id, data, spec) {
  const node = document.getElementById(id);
  if (!node || !node.clientWidth) return;
  let chart = charts[id];
  if (!chart) chart = charts[id] = makeChart(node, spec());
  if (chart.width !== node.clientWidth) chart.setSize({width: node.clientWidth,
                                                       height: CHART_HEIGHT});
  chart.setData(data);
}

function draw() {
  if (typeof uPlot === "undefined") return;  // the library did not load: figures only
  const a = state.api;
  plot("api-latency-chart", [a.t, a.p50, a.p99], () => ({
    series: [["p50", COLORS.p50], ["p99", COLORS.p99]], y: {fromZero: true}, fmt: fmtNum}));
  plot("api-rate-chart", [a.t, a.requests], () => ({
    series: [["requests/s", COLORS.scores]], y: {fromZero: true}, fmt: fmtNum}));
  for (const [name, s] of Object.entries(state.pipelines)) {
    if (s.card.classList.contains("idle")) continue;
    const se = s.series;
    plot(`${name}-throughput-chart`, [se.t, se.events, se.labels, se.scores], () => ({
      series: [["events", COLORS.events], ["labels learned", COLORS.labels],
               ["API scores", COLORS.scores]], y: {fromZero: true}, fmt: fmtNum}));
    const metric = METRIC_NAMES[s.info.metric] || s.info.metric;
    const bounded = BOUNDED_METRICS.includes(s.info.metric);
    plot(`${name}-metric-chart`, [se.t, se.metric], () => ({
      series: [[metric, COLORS.metric]], y: bounded ? {floor: 0, ceil: 1} : {},
      fmt: v => v.toFixed(3), markers: () => state.pipelines[name].markers}));
  }
}

async function poll() {
  const box = document.getElementById("error");
  try {
    const url = "dashboard/data" + (state.since !== null ? "?since=" + state.since : "");
    const resp = await fetch(url, {cache: "no-store", credentials: "same-origin"});
    if (resp.status === 401 || resp.status === 403) {
      throw new Error("the API asks for a token: add /dashboard/data to "
                      + "DRIFTLINE_API_OPEN_PATHS to open the dashboard");
    }
    if (!resp.ok) throw new Error(`GET /dashboard/data answered ${resp.status}`);
    const d = await resp.json();
    ingest(d);
    render(d);
    box.classList.remove("shown");
  } catch (exc) {
    box.textContent = "Live data unavailable: " + exc.message + " (retrying)";
    box.classList.add("shown");
  } finally {
    setTimeout(poll, Math.max(1000, state.interval * 1000 / 2));
  }
}
window.addEventListener("resize", () => draw());
poll();
