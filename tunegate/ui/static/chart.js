// tunegate dashboard: a small self-contained SVG line chart for loss per step (no dependencies).
// Reads [{step, train_loss, valid_loss}] from <script id="loss-data" type="application/json">
// and draws into #loss-chart: one <circle class="point train|valid"> per reported value.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var host = document.getElementById("loss-chart");
  var source = document.getElementById("loss-data");
  if (!host || !source) return;
  var points = JSON.parse(source.textContent || "[]");
  var W = 900, H = 320, M = { top: 12, right: 20, bottom: 36, left: 56 };

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function series(name) {
    return points.filter(function (p) { return typeof p[name] === "number"; })
                 .map(function (p) { return { step: p.step, value: p[name] }; });
  }
  function ticks(lo, hi, n) {
    if (hi === lo) return [lo];
    var raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; });
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  var train = series("train_loss"), valid = series("valid_loss");
  var all = train.concat(valid);
  if (!all.length) return;
  var steps = all.map(function (p) { return p.step; }), values = all.map(function (p) { return p.value; });
  var x0 = Math.min.apply(null, steps), x1 = Math.max.apply(null, steps);
  var y0 = Math.min.apply(null, values), y1 = Math.max.apply(null, values);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  var pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 = Math.max(0, y0 - pad); y1 += pad;
  var iw = W - M.left - M.right, ih = H - M.top - M.bottom;
  function sx(v) { return M.left + (v - x0) / (x1 - x0) * iw; }
  function sy(v) { return M.top + (1 - (v - y0) / (y1 - y0)) * ih; }

  var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "data-points": String(all.length) });
  var grid = el("g", { "class": "grid" }, svg), axis = el("g", { "class": "axis" }, svg);
  ticks(y0, y1, 5).forEach(function (v) {
    el("line", { x1: M.left, x2: W - M.right, y1: sy(v), y2: sy(v) }, grid);
    el("text", { x: M.left - 6, y: sy(v) + 4, "text-anchor": "end" }, axis).textContent = +v.toFixed(4);
  });
  ticks(x0, x1, 8).filter(function (v) { return Math.abs(v - Math.round(v)) < 1e-9; }).forEach(function (v) {
    el("line", { x1: sx(v), x2: sx(v), y1: H - M.bottom, y2: H - M.bottom + 4 }, axis);
    el("text", { x: sx(v), y: H - M.bottom + 16, "text-anchor": "middle" }, axis).textContent = v;
  });
  el("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }, axis);
  el("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }, axis);
  el("text", { x: M.left + iw / 2, y: H - 4, "text-anchor": "middle" }, axis).textContent = "step";
  el("text", { x: 12, y: M.top + ih / 2, transform: "rotate(-90 12 " + (M.top + ih / 2) + ")",
               "text-anchor": "middle" }, axis).textContent = "loss";

  [["train", train], ["valid", valid]].forEach(function (pair) {
    var name = pair[0], data = pair[1];
    if (!data.length) return;
    el("polyline", { "class": "line " + name, points: data.map(function (p) {
      return sx(p.step).toFixed(1) + "," + sy(p.value).toFixed(1); }).join(" ") }, svg);
    var dots = el("g", { "class": "points " + name }, svg);
    data.forEach(function (p) {
      var c = el("circle", { "class": "point " + name, cx: sx(p.step).toFixed(1), cy: sy(p.value).toFixed(1),
                             r: data.length > 200 ? 1.5 : 3, "data-step": p.step, "data-value": p.value }, dots);
      el("title", {}, c).textContent = name + " loss " + p.value + " at step " + p.step;
    });
  });
  host.appendChild(svg);
})();
