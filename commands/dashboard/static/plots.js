// Small canvas plots for the night panels: no library, no network.
"use strict";

const Plots = (() => {
  const INK = "#c9d1d9", GRID = "#30363d", BUDGET = "#f85149", LINE = "#58a6ff", LINE2 = "#d29922";
  const BANDS = { u: "#8b5cf6", g: "#3fb950", r: "#f85149", i: "#d29922", z: "#a5a5a5", y: "#ff7b72" };

  function setup(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300, height = canvas.clientHeight || 150;
    if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
      canvas.width = width * ratio;
      canvas.height = height * ratio;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = INK;
    ctx.strokeStyle = GRID;
    return { ctx, width, height };
  }

  function empty(ctx, width, height, text) {
    ctx.fillStyle = "#8b949e";
    ctx.textAlign = "center";
    ctx.fillText(text, width / 2, height / 2);
    ctx.textAlign = "left";
  }

  function frame(ctx, box, yMax, yLabel) {
    ctx.strokeStyle = GRID;
    ctx.beginPath();
    ctx.moveTo(box.x, box.y);
    ctx.lineTo(box.x, box.y + box.h);
    ctx.lineTo(box.x + box.w, box.y + box.h);
    ctx.stroke();
    ctx.fillStyle = INK;
    ctx.fillText(fmt(yMax), 2, box.y + 8);
    ctx.fillText("0", 2, box.y + box.h);
    if (yLabel) ctx.fillText(yLabel, box.x + 4, box.y + 8);
  }

  function fmt(value) {
    if (value >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (value >= 1e3) return (value / 1e3).toFixed(1) + "k";
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  function hline(ctx, box, y, color, label) {
    ctx.strokeStyle = color;
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(box.x, y);
    ctx.lineTo(box.x + box.w, y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = color;
    ctx.fillText(label, box.x + box.w - ctx.measureText(label).width - 2, y - 3);
  }

  // Latency histogram: 5 s bins up to 120 s (the last bin takes everything above), 60 s line.
  function histogram(canvas, values, budget) {
    const { ctx, width, height } = setup(canvas);
    if (!values.length) return empty(ctx, width, height, "no visit latencies yet");
    const binWidth = 5, bins = new Array(25).fill(0);
    for (const v of values) bins[Math.min(bins.length - 1, Math.max(0, Math.floor(v / binWidth)))]++;
    const top = Math.max(...bins);
    const box = { x: 30, y: 6, w: width - 36, h: height - 22 };
    frame(ctx, box, top, "visits");
    const bw = box.w / bins.length;
    bins.forEach((count, i) => {
      const h = (count / top) * box.h;
      ctx.fillStyle = i * binWidth >= budget ? BUDGET : LINE;
      ctx.fillRect(box.x + i * bw + 1, box.y + box.h - h, bw - 2, h);
    });
    const xb = box.x + (budget / (bins.length * binWidth)) * box.w;
    ctx.strokeStyle = BUDGET;
    ctx.beginPath();
    ctx.moveTo(xb, box.y);
    ctx.lineTo(xb, box.y + box.h);
    ctx.stroke();
    ctx.fillStyle = INK;
    for (let s = 0; s <= 120; s += 30) ctx.fillText(s + "s", box.x + (s / 125) * box.w, height - 3);
  }

  // Time series of [tai, value] points with an optional horizontal budget line.
  function series(canvas, points, opts) {
    const { ctx, width, height } = setup(canvas);
    if (!points.length) return empty(ctx, width, height, opts.empty || "no data yet");
    const box = { x: 30, y: 6, w: width - 36, h: height - 22 };
    const t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1);
    let yMax = opts.yMax || Math.max(...points.map((p) => p[1]), opts.budget || 0) * 1.1 || 1;
    frame(ctx, box, yMax, opts.label);
    const X = (t) => box.x + ((t - t0) / (t1 - t0)) * box.w;
    const Y = (v) => box.y + box.h - (Math.min(v, yMax) / yMax) * box.h;
    if (opts.budget) hline(ctx, box, Y(opts.budget), BUDGET, opts.budget + " s");
    ctx.strokeStyle = opts.color || LINE;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
    ctx.stroke();
    ctx.fillStyle = opts.color || LINE;
    for (const p of points) ctx.fillRect(X(p[0]) - 1.5, Y(p[1]) - 1.5, 3, 3);
    if (opts.second) {
      const s = opts.second, sMax = Math.max(...s.points.map((p) => p[1]), 1);
      ctx.strokeStyle = LINE2;
      ctx.beginPath();
      s.points.forEach((p, i) => {
        const y = box.y + box.h - (p[1] / sMax) * box.h;
        i ? ctx.lineTo(X(p[0]), y) : ctx.moveTo(X(p[0]), y);
      });
      ctx.stroke();
      ctx.fillStyle = LINE2;
      ctx.fillText(s.label + " (max " + fmt(sMax) + ")", box.x + 4, box.y + 20);
    }
    ctx.fillStyle = INK;
    ctx.fillText(Live.hms(t0), box.x, height - 3);
    const last = Live.hms(t1) + " TAI";
    ctx.fillText(last, box.x + box.w - ctx.measureText(last).width, height - 3);
  }

  // Bars of [label, value].
  function bars(canvas, items, label) {
    const { ctx, width, height } = setup(canvas);
    if (!items.length) return empty(ctx, width, height, "no alerts yet");
    const box = { x: 30, y: 6, w: width - 36, h: height - 22 };
    const top = Math.max(...items.map((i) => i[1]), 1);
    frame(ctx, box, top, label);
    const bw = box.w / items.length;
    items.forEach(([name, value], i) => {
      const h = (value / top) * box.h;
      ctx.fillStyle = LINE;
      ctx.fillRect(box.x + i * bw + 1, box.y + box.h - h, Math.max(1, bw - 2), h);
    });
    ctx.fillStyle = INK;
    ctx.fillText(String(items[0][0]), box.x, height - 3);
    const last = String(items[items.length - 1][0]);
    ctx.fillText(last, box.x + box.w - ctx.measureText(last).width, height - 3);
  }

  // Per-visit, per-CCD stage grid: colour from grey (no news) to green (alerts published).
  function grid(canvas, visits, nStages) {
    const { ctx, width, height } = setup(canvas);
    const shown = visits.slice(-14);
    if (!shown.length) return empty(ctx, width, height, "no visits yet");
    const detectors = [...new Set(shown.flatMap((v) => Object.keys(v.ccds).map(Number)))].sort((a, b) => a - b);
    if (!detectors.length) return empty(ctx, width, height, "announced: visit " + shown[shown.length - 1].visit);
    const left = 56, rowH = Math.min(18, (height - 14) / shown.length);
    const cellW = (width - left - 4) / detectors.length;
    shown.forEach((visit, row) => {
      const y = 2 + row * rowH;
      ctx.fillStyle = INK;
      ctx.fillText("v" + visit.visit, 2, y + rowH - 4);
      detectors.forEach((det, col) => {
        const ccd = visit.ccds[String(det)];
        let color = "#21262d";
        if (ccd) {
          const f = (ccd.stage + 1) / nStages;
          color = ccd.status !== 0 ? BUDGET : f >= 1 ? "#3fb950" : `hsl(210, 70%, ${25 + 35 * f}%)`;
        }
        ctx.fillStyle = color;
        ctx.fillRect(left + col * cellW, y, Math.max(1, cellW - 1), rowH - 2);
      });
    });
    ctx.fillStyle = INK;
    ctx.fillText("CCD " + detectors[0] + " … " + detectors[detectors.length - 1], left, height - 2);
  }

  // Equirectangular sky: RA 360° → 0° left to right (east left), Dec −90° … +90°.
  function sky(canvas, visits, alerts) {
    const { ctx, width, height } = setup(canvas);
    const X = (ra) => 4 + ((360 - ra) / 360) * (width - 8);
    const Y = (dec) => 4 + ((90 - dec) / 180) * (height - 16);
    ctx.strokeStyle = GRID;
    for (let ra = 0; ra <= 360; ra += 60) {
      ctx.beginPath(); ctx.moveTo(X(ra), Y(90)); ctx.lineTo(X(ra), Y(-90)); ctx.stroke();
    }
    for (let dec = -60; dec <= 60; dec += 30) {
      ctx.beginPath(); ctx.moveTo(X(360), Y(dec)); ctx.lineTo(X(0), Y(dec)); ctx.stroke();
    }
    ctx.fillStyle = "#ffa657";
    for (const [ra, dec] of alerts) ctx.fillRect(X(ra) - 0.75, Y(dec) - 0.75, 1.5, 1.5);
    for (const [, ra, dec, band] of visits) {
      if (ra === null || dec === null) continue;
      ctx.strokeStyle = BANDS[band] || INK;
      ctx.beginPath();
      ctx.arc(X(ra), Y(dec), 4, 0, 2 * Math.PI);
      ctx.stroke();
    }
    ctx.fillStyle = INK;
    ctx.fillText("RA 360°", 4, height - 2);
    ctx.fillText("0°", width - 16, height - 2);
    ctx.fillText(visits.length + " visits, " + alerts.length + " alert positions", width / 2 - 60, height - 2);
  }

  return { histogram, series, bars, grid, sky };
})();
