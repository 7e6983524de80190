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

  // A CCD's colour: grey (no news) through blue (stages) to green (alerts published), red if failed.
  function stageColor(ccd, nStages) {
    if (!ccd) return "#21262d";
    const f = (ccd.stage + 1) / nStages;
    return ccd.status !== 0 ? BUDGET : f >= 1 ? "#3fb950" : `hsl(${245 - 70 * f}, 65%, ${24 + 36 * f}%)`;
  }

  // Columns of the grid: every detector of the camera (grouped by raft) when its geometry is
  // known, else the detectors heard of.
  function gridColumns(shown, geometry) {
    if (geometry) return geometry.detectors.map((d) => ({ id: d.id, raft: d.raft }));
    const ids = [...new Set(shown.flatMap((v) => Object.keys(v.ccds).map(Number)))].sort((a, b) => a - b);
    return ids.map((id) => ({ id, raft: "" }));
  }

  // Per-visit, per-CCD stage grid; rafts separated by a gap and named underneath.
  function grid(canvas, visits, nStages, geometry) {
    const { ctx, width, height } = setup(canvas);
    canvas.dataset.columns = "0";
    const shown = visits.slice(-14);
    if (!shown.length) return empty(ctx, width, height, "no visits yet");
    const columns = gridColumns(shown, geometry);
    if (!columns.length || !shown.some((v) => Object.keys(v.ccds).length)) {
      return empty(ctx, width, height, "announced: visit " + shown[shown.length - 1].visit);
    }
    const labels = shown.map((v) => "v" + v.visit);
    const left = 6 + Math.max(...labels.map((l) => ctx.measureText(l).width));
    const rafts = columns.filter((c, i) => i === 0 || c.raft !== columns[i - 1].raft).length;
    const gap = rafts > 1 ? 3 : 0, footer = 14;
    const cellW = (width - left - 4 - gap * (rafts - 1)) / columns.length;
    const rowH = Math.min(18, (height - footer - 2) / shown.length);
    const xs = [];
    let x = left, raftStart = left;
    const raftSpans = [];
    columns.forEach((c, i) => {
      if (i > 0 && c.raft !== columns[i - 1].raft) {
        raftSpans.push([columns[i - 1].raft, raftStart, x]);
        x += gap;
        raftStart = x;
      }
      xs.push(x);
      x += cellW;
    });
    raftSpans.push([columns[columns.length - 1].raft, raftStart, x]);
    shown.forEach((visit, row) => {
      const y = 2 + row * rowH;
      ctx.fillStyle = INK;
      ctx.fillText(labels[row], 2, y + rowH - 4);
      columns.forEach((c, col) => {
        ctx.fillStyle = stageColor(visit.ccds[String(c.id)], nStages);
        ctx.fillRect(xs[col], y, Math.max(1, cellW - (cellW > 3 ? 1 : 0)), rowH - 2);
      });
    });
    ctx.fillStyle = INK;
    const base = 2 + shown.length * rowH + footer - 3;
    if (rafts > 1) {
      for (const [name, x0, x1] of raftSpans) {
        const w = ctx.measureText(name).width;
        if (w <= x1 - x0) ctx.fillText(name, (x0 + x1 - w) / 2, base);
      }
    } else {
      ctx.fillText("CCD " + columns[0].id + " … " + columns[columns.length - 1].id, left, base);
    }
    canvas.dataset.columns = String(columns.length);
  }

  // The focal plane of the chosen visit (else the newest with CCD news): every detector at its position (mm,
  // +y up), coloured by stage, each raft named in its centre cell; a legend of the stages.
  // The canvas keeps what it drew (data-title, data-transform, data-ccds) and names the CCD
  // under the pointer in its tooltip.
  function focalPlane(canvas, visits, stages, geometry, chosen) {
    canvas.style.height = geometry ? "" : "40px"; // a one-line note until a camera is known
    const { ctx, width, height } = setup(canvas);
    canvas.dataset.ccds = "0";
    const visit = visits.find((v) => v.visit === chosen) || [...visits].reverse().find((v) => Object.keys(v.ccds).length);
    if (!geometry) return empty(ctx, width, height, visit ? "camera geometry not known" : "no visits yet");
    const dets = geometry.detectors, half = geometry.slotMm / 2;
    const xMin = Math.min(...dets.map((d) => d.x)) - half, xMax = Math.max(...dets.map((d) => d.x)) + half;
    const yMin = Math.min(...dets.map((d) => d.y)) - half, yMax = Math.max(...dets.map((d) => d.y)) + half;
    const legendW = 160, top = 18, bottom = 16;
    const scale = Math.min((width - legendW - 12) / (xMax - xMin), (height - top - bottom) / (yMax - yMin));
    const ox = 6 + ((width - legendW - 12) - scale * (xMax - xMin)) / 2;
    const X = (mm) => ox + (mm - xMin) * scale;
    const Y = (mm) => top + (yMax - mm) * scale;
    const side = geometry.slotMm * scale;
    const rafts = new Set(dets.map((d) => d.raft)).size;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#0d1117";
    for (const d of dets) {
      const ccd = visit ? visit.ccds[String(d.id)] : undefined;
      ctx.fillStyle = stageColor(ccd, stages.length);
      ctx.fillRect(X(d.x) - side / 2, Y(d.y) - side / 2, side, side);
      const sensor = d.name.split("_").pop();
      const label = rafts > 1 && sensor === "S11" ? d.raft : side >= 34 ? sensor : "";
      if (label && ctx.measureText(label).width < side - 2) {
        const lx = X(d.x) - ctx.measureText(label).width / 2, ly = Y(d.y) + 4;
        ctx.strokeText(label, lx, ly);
        ctx.fillStyle = INK;
        ctx.fillText(label, lx, ly);
      }
    }
    ctx.lineWidth = 1;
    if (rafts > 1) {
      const gap = geometry.slotMm / 0.86 - geometry.slotMm, pad = half + 0.45 * gap;
      const boxes = new Map();
      for (const d of dets) {
        const b = boxes.get(d.raft) || [Infinity, -Infinity, Infinity, -Infinity];
        boxes.set(d.raft, [Math.min(b[0], d.x), Math.max(b[1], d.x), Math.min(b[2], d.y), Math.max(b[3], d.y)]);
      }
      ctx.strokeStyle = "#6e7681";
      for (const [x0, x1, y0, y1] of boxes.values()) {
        ctx.strokeRect(X(x0 - pad), Y(y1 + pad), (x1 - x0 + 2 * pad) * scale, (y1 - y0 + 2 * pad) * scale);
      }
    }
    ctx.fillStyle = INK;
    const done = visit ? dets.filter((d) => {
      const ccd = visit.ccds[String(d.id)];
      return ccd && ccd.stage === stages.length - 1 && !ccd.status;
    }).length : 0;
    const title = visit ? `visit ${visit.visit} · ${geometry.camera} · ${done}/${dets.length} CCDs published`
      : `${geometry.camera} · ${dets.length} CCDs`;
    ctx.fillText(title, 4, 12);
    if (geometry.slotMm > 1.2 * geometry.ccdMm) {
      ctx.fillStyle = "#8b949e";
      ctx.fillText(`positions to scale, cells enlarged: a CCD is ${geometry.ccdMm.toFixed(2)} mm, drawn ${geometry.slotMm.toFixed(1)} mm`,
        4, height - 3);
    }
    const lx = width - legendW + 4;
    const legend = [...stages.map((name, i) => [name, stageColor({ stage: i, status: 0 }, stages.length)]),
      ["failed", BUDGET], ["no news", stageColor(undefined, stages.length)]];
    legend.forEach(([name, color], i) => {
      const y = top + 4 + i * 15;
      ctx.fillStyle = color;
      ctx.fillRect(lx, y, 10, 10);
      ctx.fillStyle = INK;
      ctx.fillText(name, lx + 14, y + 9);
    });
    canvas.dataset.title = title;
    canvas.dataset.transform = JSON.stringify({ ox, top, xMin, yMax, scale });
    canvas.dataset.ccds = String(dets.length);
    canvas.onmousemove = (e) => {
      const mx = xMin + (e.offsetX - ox) / scale, my = yMax - (e.offsetY - top) / scale;
      const d = dets.find((c) => Math.abs(c.x - mx) <= half && Math.abs(c.y - my) <= half);
      const ccd = d && visit ? visit.ccds[String(d.id)] : undefined;
      canvas.title = d ? `${d.name} (detector ${d.id})` + (ccd ? ": " + (ccd.status ? "failed" : stages[ccd.stage] || "") : "") : "";
    };
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

  return { histogram, series, bars, grid, focalPlane, sky };
})();
