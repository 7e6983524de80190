// The next-visit and schedule page (DMS-REQ-0353): /api/v1/schedule, refreshed on every
// nextVisit or predictedSchedule event from the WebSocket.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  let offset = 37, backoff = 0.5;

  function fmt(value) {
    return typeof value === "number" && !Number.isInteger(value) ? value.toFixed(4) : esc(value);
  }

  async function refresh() {
    const data = await (await fetch("/api/v1/schedule", { cache: "no-store" })).json();
    offset = data.tai - Date.now() / 1000;
    const next = data.nextVisit;
    $("#next tbody").innerHTML = !next ? '<tr><td class="muted">no nextVisit yet</td></tr>' :
      Object.entries(next).map(([k, v]) => `<tr data-field="${esc(k)}"><th>${esc(k)}</th><td>${
        Array.isArray(v) ? esc(v.join(", ")) : fmt(v)}</td></tr>`).join("");
    const predicted = data.predictedSchedule;
    $("#published").textContent = predicted.publishedTai ? `published ${new Date((predicted.publishedTai - 37) * 1000).toISOString()} UTC` : "none published yet";
    $("#predicted tbody").innerHTML = predicted.visits.map((v) =>
      `<tr data-visit="${esc(v.visit)}"><td>${esc(v.visit)}</td><td>${esc(v.startTaiIso)}</td><td>${esc(v.startUtc)}</td><td>${esc(v.band)}</td>
        <td>${fmt(v.ra)}</td><td>${fmt(v.dec)}</td><td>${fmt(v.exposureTime)}</td><td>${esc(v.fieldId)}</td></tr>`).join("");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`, ["dmcs.v1.json"]);
    ws.onopen = () => {
      backoff = 0.5;
      $("#conn").textContent = "live";
      $("#conn").className = "badge ok";
      ws.send(JSON.stringify({ v: 1, op: "subscribe", id: 1, topics: ["nextVisit", "predictedSchedule"] }));
      refresh();
    };
    ws.onmessage = (m) => { if (JSON.parse(m.data).op === "event") refresh(); };
    ws.onclose = () => {
      $("#conn").textContent = "reconnecting…";
      $("#conn").className = "badge alert";
      setTimeout(connect, backoff * 1000);
      backoff = Math.min(backoff * 2, 5);
    };
  }

  function clock() {
    const tai = Date.now() / 1000 + offset;
    const iso = (t) => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
    $("#clock-tai").textContent = iso(tai) + " TAI";
    $("#clock-utc").textContent = iso(tai - 37) + " UTC";
  }

  setInterval(clock, 500);
  clock();
  connect();
})();
