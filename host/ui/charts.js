// Line charts as SVG: no library, no inline style (colours come from the
// stylesheet's .series-N classes).

const NS = "http://www.w3.org/2000/svg";
const W = 600;
const H = 160;
const PAD = { left: 84, right: 8, top: 10, bottom: 26 };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(max) {
  if (!(max > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

function clock(seconds) {
  const d = new Date(seconds * 1000);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/// title: heading; times: unix seconds; series: [{ name, values }] (null
/// for a gap); format: value -> text.
export function lineChart({ title, times, series, format = String, max }) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const top = max ?? niceMax(Math.max(0, ...all));
  const x = (i) => PAD.left + (times.length < 2 ? 0 : (i / (times.length - 1)) * (W - PAD.left - PAD.right));
  const y = (v) => PAD.top + (1 - v / top) * (H - PAD.top - PAD.bottom);
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    svg.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: PAD.left - 6, y: y(v) + 5, class: "axis", "text-anchor": "end" }, format(v)));
  }
  if (times.length) {
    svg.append(el("text", { x: PAD.left, y: H - 4, class: "axis" }, clock(times[0])));
    svg.append(el("text", { x: W - PAD.right, y: H - 4, class: "axis", "text-anchor": "end" }, clock(times[times.length - 1])));
  } else {
    svg.append(el("text", { x: W / 2, y: H / 2, class: "axis", "text-anchor": "middle" }, "no points yet"));
  }
  series.forEach((s, n) => {
    let d = "";
    let pen = "M";
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = "M";
        return;
      }
      d += `${pen}${x(i).toFixed(1)},${y(Math.min(v, top)).toFixed(1)} `;
      pen = "L";
    });
    if (d) svg.append(el("path", { d, class: `line series-${n}` }));
  });
  figure.append(svg);
  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((s, n) => {
    const item = document.createElement("li");
    item.className = `series-${n}`;
    const last = [...s.values].reverse().find((v) => v !== null && v !== undefined);
    item.textContent = `${s.name}: ${last === undefined ? "–" : format(last)}`;
    legend.append(item);
  });
  figure.append(legend);
  return figure;
}
