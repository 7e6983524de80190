// The "Batch reprocessing" panel: the page's copy of commands/dashboard/batch.py (Batch.apply,
// the same fold and checks) and its rendering. Text goes in through textContent only.
"use strict";

const Batch = (() => {
  const MODES = ["release", "catchUp"], PHASES = ["ccd", "region", "characterize"];
  const STATUSES = ["running", "done", "failed", "interrupted"];
  const UNIT = /^(ccd:[0-9]+\/[0-9]+|region:.+|characterize)$/s;
  const MAX_REASON = 500, SHOWN_FAILURES = 50;
  const isText = (v) => typeof v === "string" && v.length > 0;
  const isCount = (v) => Number.isInteger(v) && v >= 0;
  const isNumberOrNull = (v) => v === null || v === undefined || Number.isFinite(v);

  function validProgress(d) {
    return isText(d.run) && MODES.includes(d.mode) && PHASES.includes(d.phase) &&
      STATUSES.includes(d.status) && isCount(d.done) && isCount(d.total) && isCount(d.failed) &&
      isNumberOrNull(d.ratePerSecond) && isNumberOrNull(d.etaSeconds) &&
      isNumberOrNull(d.startedTai) && (d.workers === null || d.workers === undefined || isCount(d.workers));
  }

  function validFailure(d) {
    return isText(d.run) && isText(d.unit) && UNIT.test(d.unit) && typeof d.reason === "string" &&
      typeof d.final === "boolean" && isCount(d.attempt);
  }

  function run(batch, name, tai) {
    let r = batch.runs.find((x) => x.run === name);
    if (!r) {
      r = { run: name, mode: null, phase: null, done: null, total: null, failed: null, ratePerSecond: null,
        etaSeconds: null, status: null, startedTai: null, workers: null, progressTai: null, updatedTai: tai,
        stale: false, failures: [] };
      batch.runs.push(r);
    } else if (tai > r.updatedTai) {
      r.updatedTai = tai;
    }
    batch.runs.sort((a, b) => b.updatedTai - a.updatedTai);
    batch.runs.length = Math.min(batch.runs.length, batch.limits.runs);
    return r;
  }

  const FIELDS = ["mode", "phase", "done", "total", "failed", "ratePerSecond", "etaSeconds", "status",
    "startedTai", "workers"];

  function apply(batch, event) {
    const d = event.data || {};
    if (event.topic === "reprocessProgress" && validProgress(d)) {
      const r = run(batch, d.run, event.tai);
      if (r.progressTai === null || event.tai >= r.progressTai) {
        for (const key of FIELDS) r[key] = d[key] ?? null;
        r.progressTai = event.tai;
      }
    } else if (event.topic === "reprocessFailure" && validFailure(d)) {
      const r = run(batch, d.run, event.tai);
      const reason = d.reason.length > MAX_REASON ? d.reason.slice(0, MAX_REASON - 1) + "…" : d.reason;
      r.failures.unshift({ tai: event.tai, run: d.run, unit: d.unit, reason, attempt: d.attempt, final: d.final });
      r.failures.length = Math.min(r.failures.length, batch.limits.failuresPerRun);
    }
  }

  // ------------------------------------------------------------------ rendering
  const BADGE = { running: "run", done: "ok", failed: "alert", interrupted: "warn" };

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }

  function progressCell(r) {
    const td = el("td", null, "progress");
    const bar = el("span", null, "bar");
    const fill = el("span", null, BADGE[r.status] || "grey");
    const fraction = r.total ? Math.min(1, (r.done || 0) / r.total) : 0;
    fill.style.width = (100 * fraction).toFixed(1) + "%";
    bar.append(fill);
    td.append(bar, el("span", r.done === null ? "—" : `${r.done}/${r.total}`, "count"));
    return td;
  }

  function emptyRow(columns, text) {
    const tr = el("tr");
    const td = el("td", text, "muted");
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  function renderRuns(batch) {
    const now = Live.taiNow();
    const rows = batch.runs.map((r) => {
      const stale = r.status === "running" && now - r.updatedTai > batch.staleSeconds;
      const tr = el("tr");
      Object.assign(tr.dataset, { run: r.run, status: r.status || "", stale: String(stale) });
      const status = el("td", null, "status");
      status.append(el("span", r.status || "unknown", "badge " + (BADGE[r.status] || "grey")));
      if (stale) status.append(" ", el("span", "stale", "badge alert stale"));
      tr.append(el("td", r.run), el("td", r.mode ?? "—"), el("td", r.phase ?? "—"), progressCell(r),
        el("td", r.ratePerSecond === null ? "—" : `${r.ratePerSecond.toFixed(2)} /s`),
        el("td", duration(r.etaSeconds)), el("td", r.failed ?? "—", r.failed ? "alert-text" : ""),
        el("td", r.workers ?? "—"), status,
        el("td", `${duration(now - r.updatedTai)} ago`, stale ? "alert-text" : ""));
      return tr;
    });
    document.querySelector("#batch-runs tbody").replaceChildren(...(rows.length ? rows : [emptyRow(10, "no batch runs")]));
  }

  function renderFailures(batch) {
    const failures = batch.runs.flatMap((r) => r.failures).sort((a, b) => b.tai - a.tai).slice(0, SHOWN_FAILURES);
    const rows = failures.map((f) => {
      const tr = el("tr");
      Object.assign(tr.dataset, { run: f.run, unit: f.unit, final: String(f.final) });
      tr.append(el("td", `${Live.hms(f.tai)}`), el("td", f.run), el("td", f.unit), el("td", f.attempt),
        el("td", f.final ? "final" : "will retry", f.final ? "alert-text" : "muted"), el("td", f.reason, "reason"));
      return tr;
    });
    document.querySelector("#batch-failures tbody").replaceChildren(...(rows.length ? rows : [emptyRow(6, "no failures")]));
    const total = batch.runs.reduce((n, r) => n + r.failures.length, 0);
    document.querySelector("#batch-summary").textContent = batch.runs.length
      ? `${batch.runs.length} run${batch.runs.length === 1 ? "" : "s"} · ${total} failed attempt${total === 1 ? "" : "s"} kept` : "";
  }

  let timer = null, failuresDirty = true;

  function render() {
    timer = null;
    const batch = Live.state.batch;
    if (!batch || !document.querySelector("#batch-runs")) return;
    renderRuns(batch);
    if (failuresDirty) renderFailures(batch);
    failuresDirty = false;
  }

  Live.listeners.push((what) => {
    if (what !== "all" && what !== "reprocessProgress" && what !== "reprocessFailure") return;
    failuresDirty = true;
    if (!timer) timer = setTimeout(render, 100);
  });
  setInterval(render, 1000); // ages and staleness move with the clock

  return { apply, render };
})();
