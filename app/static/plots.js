// Small SVG plots drawn by the page itself (no library, no CDN: the page works offline):
// a histogram of a job's O/H and one galaxy on the mass–metallicity relation.

const NS = "http://www.w3.org/2000/svg";

/** An SVG element with attributes and children (elements or strings). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

/** A linear map from [d0, d1] to [r0, r1]. */
function scale(d0, d1, r0, r1) {
  return (v) => r0 + ((v - d0) * (r1 - r0)) / (d1 - d0);
}

/** 1, 2, 2.5 or 5 times a power of ten, the nearest above ``step``: readable bin widths. */
function niceStep(step) {
  const power = 10 ** Math.floor(Math.log10(step));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= step * 0.999);
}

/** The decimals that write every multiple of ``step`` exactly (0.25 → 2, 5 → 0). */
function decimals(step) {
  let d = 0;
  while (d < 8 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-6) d += 1;
  return d;
}

/** Tick values from lo to hi every ``step`` (rounded, so 8.6 is not 8.600000001). */
function ticks(lo, hi, step) {
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) {
    out.push(Number(v.toFixed(6)));
  }
  return out;
}

function axes(svg, box, x, y, xTicks, yTicks, xLabel, yLabel, digits) {
  const { left, right, top, bottom } = box;
  svg.append(
    el("line", { class: "axis", x1: left, x2: right, y1: bottom, y2: bottom }),
    el("line", { class: "axis", x1: left, x2: left, y1: top, y2: bottom }),
  );
  for (const t of xTicks) {
    svg.append(
      el("line", { class: "axis", x1: x(t), x2: x(t), y1: bottom, y2: bottom + 4 }),
      el("text", { x: x(t), y: bottom + 16, "text-anchor": "middle" }, t.toFixed(digits[0])),
    );
  }
  for (const t of yTicks) {
    svg.append(
      el("line", { class: "grid", x1: left, x2: right, y1: y(t), y2: y(t) }),
      el("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end" }, t.toFixed(digits[1])),
    );
  }
  const middle = (top + bottom) / 2;
  svg.append(
    el("text", { x: (left + right) / 2, y: bottom + 34, "text-anchor": "middle" }, xLabel),
    el(
      "text",
      { x: 14, y: middle, "text-anchor": "middle", transform: `rotate(-90 14 ${middle})` },
      yLabel,
    ),
  );
}

/** A histogram of ``values`` (finite numbers) as an SVG element; bars have class "bar" and
 *  their count in data-count. */
export function histogram(values, xLabel) {
  const width = 480;
  const height = 220;
  const box = { left: 48, right: width - 24, top: 12, bottom: height - 42 };
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi - lo < 1e-6) {
    // One value (or all alike): a bar in the middle of a 0.1 dex window.
    lo -= 0.05;
    hi += 0.05;
  }
  const bins = Math.min(30, Math.max(5, Math.ceil(Math.sqrt(values.length))));
  const step = niceStep((hi - lo) / bins);
  const start = Math.floor(lo / step) * step;
  const n = Math.max(1, Math.ceil((hi - start) / step + 1e-9));
  const counts = new Array(n).fill(0);
  for (const v of values) counts[Math.min(n - 1, Math.floor((v - start) / step))] += 1;
  // The y axis ends on a tick above the tallest bar; counts are whole numbers.
  const yStep = Math.max(1, Math.round(niceStep(Math.max(...counts) / 4)));
  const most = Math.ceil(Math.max(...counts) / yStep) * yStep;

  const x = scale(start, start + n * step, box.left, box.right);
  const y = scale(0, most, box.bottom, box.top);
  const svg = el("svg", {
    class: "plot histogram",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": `histogram of ${values.length} values of ${xLabel}`,
  });
  const every = Math.ceil((n + 1) / 6); // at most about six x labels
  const xTicks = ticks(start, start + n * step, step * every);
  const yTicks = ticks(0, most, yStep);
  axes(svg, box, x, y, xTicks, yTicks, xLabel, "galaxies", [decimals(step * every), 0]);
  counts.forEach((count, i) => {
    const left = start + i * step;
    const right = left + step;
    const bar = el(
      "rect",
      {
        class: "bar",
        "data-count": count,
        x: x(left) + 0.5,
        y: y(count),
        width: Math.max(0, x(right) - x(left) - 1),
        height: box.bottom - y(count),
      },
      el("title", {}, `${left.toFixed(4)} to ${right.toFixed(4)}: ${count}`),
    );
    svg.append(bar);
  });
  return svg;
}

// Tremonti et al. (2004, ApJ 613, 898), eq. 3: the mass–metallicity relation of SDSS
// star-forming galaxies, fitted over 8.5 < log M* < 11.5 on the same MPA-JHU O/H galmet
// learned from.
export const MZR_RANGE = [8.5, 11.5];
export function tremonti(logMass) {
  return -1.492 + 1.847 * logMass - 0.08026 * logMass * logMass;
}

/** One galaxy (values and 1σ errors) on the Tremonti relation, as an SVG element. */
export function massMetallicity(logMass, logMassSigma, oh, ohSigma) {
  const width = 340;
  const height = 250;
  const box = { left: 52, right: width - 12, top: 12, bottom: height - 42 };
  const sm = Number.isFinite(logMassSigma) ? logMassSigma : 0;
  const so = Number.isFinite(ohSigma) ? ohSigma : 0;
  const x0 = Math.min(MZR_RANGE[0], logMass - sm - 0.1);
  const x1 = Math.max(MZR_RANGE[1], logMass + sm + 0.1);
  const y0 = Math.min(8.3, oh - so - 0.05);
  const y1 = Math.max(9.3, oh + so + 0.05);
  const x = scale(x0, x1, box.left, box.right);
  const y = scale(y0, y1, box.bottom, box.top);
  const svg = el("svg", {
    class: "plot mzr",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": "the galaxy on the Tremonti et al. (2004) mass–metallicity relation",
  });
  const xStep = x1 - x0 > 4 ? 1 : 0.5;
  const yStep = y1 - y0 > 1.6 ? 0.5 : 0.2;
  axes(svg, box, x, y, ticks(x0, x1, xStep), ticks(y0, y1, yStep),
    "log M* / M☉", "12 + log(O/H)", [1, 1]);

  const points = [];
  for (let i = 0; i <= 60; i += 1) {
    const m = MZR_RANGE[0] + ((MZR_RANGE[1] - MZR_RANGE[0]) * i) / 60;
    points.push(`${x(m).toFixed(1)},${y(tremonti(m)).toFixed(1)}`);
  }
  svg.append(
    el("polyline", { class: "curve", points: points.join(" ") }),
    el("line", { class: "errorbar", x1: x(logMass - sm), x2: x(logMass + sm),
      y1: y(oh), y2: y(oh) }),
    el("line", { class: "errorbar", x1: x(logMass), x2: x(logMass),
      y1: y(oh - so), y2: y(oh + so) }),
    el("circle", { class: "galaxy point", cx: x(logMass), cy: y(oh), r: 4 },
      el("title", {}, `this galaxy: log M* ${logMass.toFixed(2)}, 12 + log(O/H) ${oh.toFixed(3)}`)),
  );
  // The legend, in the lower right corner: the curve rises away from it.
  const lx = box.right - 150;
  const ly = box.bottom - 30;
  svg.append(
    el("line", { class: "curve", x1: lx, x2: lx + 18, y1: ly, y2: ly }),
    el("text", { x: lx + 24, y: ly + 4 }, "Tremonti et al. (2004)"),
    el("circle", { class: "galaxy", cx: lx + 9, cy: ly + 16, r: 4 }),
    el("text", { x: lx + 24, y: ly + 20 }, "this galaxy, ±1σ"),
  );
  return svg;
}
