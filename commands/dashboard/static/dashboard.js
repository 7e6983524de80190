// Renders the operator dashboard from Live.state; controls only for authorized identities.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const LETTER = { ENABLED: "E", DISABLED: "D", STANDBY: "S", FAULT: "F", OFFLINE: "O" };
  const LEVELS = { 10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL" };
  const STATE_COMMANDS = ["start", "enable", "disable", "standby", "exitControl"];
  const SEVERITY_RANK = { NONE: 1, WARNING: 2, SERIOUS: 3, CRITICAL: 4 };
  const S = Live.state;
  const chosen = { level: {}, mute: {} }; // select values kept across re-renders
  let dirty = new Set(["all"]), timer = null;

  function stateClass(state) {
    return { ENABLED: "ok", DISABLED: "warn", STANDBY: "warn", FAULT: "alert" }[state] || "grey";
  }

  function renderHeader() {
    const conn = $("#conn");
    conn.textContent = S.connected ? "live" : "reconnecting…";
    conn.className = "badge " + (S.connected ? "ok" : "alert");
    $("#gaps").textContent = `gaps ${S.gaps} · dropped ${S.dropped} · resyncs ${S.resyncs}`;
    $("#identity").textContent = S.session.identity
      ? `signed in as ${S.session.identity}` + (S.session.commandable.length ? "" : " (read-only)")
      : S.session.error || "watching (read-only)";
    $("#signout").hidden = !S.token;
    document.body.classList.toggle("readonly", !S.session.commandable.length);
  }

  function renderClock() {
    const tai = Live.taiNow();
    $("#clock-tai").textContent = Live.isoDay(tai) + " TAI";
    $("#clock-utc").textContent = Live.isoDay(tai, true) + " UTC";
  }

  function componentControls(name) {
    if (!Live.canCommand(name)) return '<span class="muted">read-only</span>';
    const buttons = STATE_COMMANDS.map((c) => `<button data-cmd="${c}" data-component="${esc(name)}">${c}</button>`).join("");
    const pick = chosen.level[name] || "20";
    const levels = Object.entries(LEVELS).map(([n, l]) => `<option value="${n}"${n === pick ? " selected" : ""}>${l}</option>`).join("");
    return `${buttons}<select class="level" data-component="${esc(name)}">${levels}</select>` +
      `<button data-cmd="setLogLevel" data-component="${esc(name)}">set level</button>`;
  }

  function renderComponents() {
    const rows = Object.values(S.components).map((c) => {
      const age = c.heartbeatAge === null || c.heartbeatAge === undefined ? "—" : c.heartbeatAge.toFixed(1) + " s";
      return `<tr data-component="${esc(c.name)}">
        <td>${esc(c.name)}${c.simulationMode ? ' <span class="badge sim">SIM</span>' : ""}</td>
        <td class="state" data-state="${esc(c.summaryState)}"><span class="letter ${stateClass(c.summaryState)}"
          title="${esc(c.summaryState)}">${LETTER[c.summaryState] || "?"}</span> ${esc(c.summaryState)}</td>
        <td class="${c.stale ? "alert-text" : ""}">${age}${c.stale ? " STALE" : ""}</td>
        <td>${c.lostHeartbeats ?? 0}</td>
        <td class="${c.errorCode ? "alert-text" : ""}">${c.errorCode ? esc(c.errorCode + ": " + c.errorReport) : ""}</td>
        <td>${esc(c.version)}</td><td>${esc(c.configuration)}</td><td>${c.restartCount ?? 0}</td>
        <td class="controls">${componentControls(c.name)}</td></tr>`;
    });
    $("#components tbody").innerHTML = rows.join("");
  }

  function muteOptions(name) {
    const pick = chosen.mute[name] || "1800";
    return [["300", "5 min"], ["1800", "30 min"], ["7200", "2 h"]]
      .map(([v, l]) => `<option value="${v}"${v === pick ? " selected" : ""}>${l}</option>`).join("");
  }

  function renderAlarms() {
    const counts = S.counts || {};
    $("#alarm-counts").textContent =
      `active ${counts.active ?? 0} · acknowledged ${counts.acknowledged ?? 0} · stale ${counts.stale ?? 0} · muted ${counts.muted ?? 0}`;
    const shown = Object.values(S.alarms)
      .filter((a) => !a.nominal || a.muted)
      .sort((a, b) => SEVERITY_RANK[b.maxSeverity] - SEVERITY_RANK[a.maxSeverity] || a.name.localeCompare(b.name));
    $("#alarms tbody").innerHTML = shown.map((a) => {
      const status = [a.acknowledged ? `acknowledged by ${esc(a.acknowledgedBy)}` : a.nominal ? "" : "unacknowledged",
        a.stale ? "stale" : "", a.muted ? `muted ≤ ${a.mutedSeverity} by ${esc(a.mutedBy)} until ${Live.hms(a.timestampUnmute)} TAI` : ""]
        .filter(Boolean).join(" · ");
      const mine = Live.canCommand(a.component);
      const actions = !mine ? '<span class="muted">read-only</span>' :
        (!a.acknowledged && !a.nominal ? `<button class="ack" data-alarm="${esc(a.name)}" data-severity="${a.maxSeverity}">acknowledge</button>` : "") +
        (a.muted ? `<button class="unmute" data-alarm="${esc(a.name)}">unmute</button>` :
          `<select class="mute-for" data-alarm="${esc(a.name)}">${muteOptions(a.name)}</select><button class="mute" data-alarm="${esc(a.name)}">mute</button>`);
      return `<tr data-alarm="${esc(a.name)}" data-severity="${a.severity}" data-max-severity="${a.maxSeverity}"
          data-acknowledged="${a.acknowledged}" data-muted="${a.muted}" data-stale="${a.stale}" class="${a.hidden ? "hidden-alarm" : ""}">
        <td><span class="sev ${a.severity}">${a.severity}</span></td><td><span class="sev ${a.maxSeverity}">${a.maxSeverity}</span></td>
        <td>${esc(a.name)}</td><td>${esc(a.reason)}</td><td>${status}</td><td class="controls">${actions}</td></tr>`;
    }).join("") || '<tr><td colspan="6" class="muted">no alarms</td></tr>';
  }

  // Focal-plane geometry per camera name, fetched once: an object, "pending" or "unknown".
  const cameras = {};
  function geometry(name) {
    if (!name) return null;
    if (cameras[name] === undefined) {
      cameras[name] = "pending";
      fetch("/api/v1/cameras/" + encodeURIComponent(name))
        .then((r) => (r.ok ? r.json() : "unknown"))
        .then((g) => { cameras[name] = g; dirty.add("all"); if (!timer) timer = setTimeout(render, 0); })
        .catch(() => setTimeout(() => { delete cameras[name]; }, 5000));
    }
    return typeof cameras[name] === "object" ? cameras[name] : null;
  }

  function renderNight() {
    const n = S.night;
    if (!n) return;
    const latest = [...n.visits].reverse().find((v) => v.camera);
    const camera = latest ? geometry(latest.camera) : null;
    Plots.grid($("#ccd-grid"), n.visits.filter((v) => !camera || !v.camera || v.camera === camera.camera),
      n.stages.length, camera);
    const pick = $("#fp-visit"), chosen = pick.value;
    const options = ['<option value="">newest</option>', ...n.visits.slice(-14).reverse()
      .map((v) => `<option value="${v.visit}"${String(v.visit) === chosen ? " selected" : ""}>visit ${v.visit}</option>`)].join("");
    if (pick.dataset.options !== options) { pick.innerHTML = options; pick.dataset.options = options; }
    Plots.focalPlane($("#focal-plane"), n.visits, n.stages, camera, chosen ? Number(chosen) : null);
    const latencies = n.latency.map((p) => p[2]);
    Plots.histogram($("#latency-hist"), latencies, 60);
    Plots.series($("#latency-series"), n.latency.map((p) => [p[0], p[2]]), { budget: 60, label: "latency s", empty: "no visit latencies yet" });
    const perVisit = n.visits.filter((v) => v.nAlerts || v.latencySeconds !== null).map((v) => [v.visit, v.nAlerts]);
    Plots.bars($("#alerts-per-visit"), perVisit, "alerts");
    Plots.series($("#buffer-series"), n.buffer.map((p) => [p[0], p[1]]), {
      yMax: 1, label: "fill", empty: "no buffer status yet", second: { label: "backlog", points: n.buffer.map((p) => [p[0], p[2]]) },
    });
    const b = n.bufferStatus || {}, i = n.ingestStatus || {};
    $("#buffer-text").textContent = b.fillFraction === undefined ? "" :
      `fill ${(100 * b.fillFraction).toFixed(1)} % · backlog ${b.backlogCount} raws (${((b.backlogBytes || 0) / 1e6).toFixed(1)} MB) · link ${b.linkState} ${b.linkBandwidthMBps ?? ""} MB/s`;
    $("#ingest-text").textContent = i.lagSeconds === undefined ? "" :
      `ingest: ${i.ingestedCount} ingested, ${i.failedCount} failed, lag ${Number(i.lagSeconds).toFixed(1)} s`;
    const within = latencies.filter((l) => l <= 60).length;
    $("#latency-text").textContent = latencies.length ? `${within}/${latencies.length} visits within 60 s` : "";
    Plots.sky($("#sky"), n.skyVisits, n.alertPositions);
  }

  function renderNextVisit() {
    const next = S.schedule && S.schedule.nextVisit;
    $("#next-visit").innerHTML = !next ? '<span class="muted">no nextVisit yet</span>' :
      `visit <b>${esc(next.visit)}</b> ${esc(next.imageName)} · band ${esc(next.band)} · RA ${Number(next.ra).toFixed(3)}° Dec ${Number(next.dec).toFixed(3)}° · ${esc(next.exposureTime)} s · announced ${Live.hms(next.publishedTai)} TAI / ${Live.hms(next.publishedTai, true)} UTC`;
    const predicted = S.schedule && S.schedule.predictedSchedule;
    $("#predicted-count").textContent = predicted && predicted.visits.length ? `${predicted.visits.length} visits predicted` : "";
  }

  function renderLogs() {
    const n = S.night;
    if (!n) return;
    const select = $("#log-component"), chosen = select.value;
    const names = [...new Set(n.logs.map((l) => l.component))].sort();
    const options = ['<option value="">all components</option>', ...names.map((c) => `<option${c === chosen ? " selected" : ""}>${esc(c)}</option>`)].join("");
    if (select.dataset.options !== options) { select.innerHTML = options; select.dataset.options = options; }
    const level = Number($("#log-level").value);
    const lines = n.logs.filter((l) => l.level >= level && (!chosen || l.component === chosen)).slice(-200).reverse();
    $("#logs tbody").innerHTML = lines.map((l) =>
      `<tr class="lvl${l.level}"><td>${Live.hms(l.tai)}</td><td>${Live.hms(l.tai, true)}</td><td>${LEVELS[l.level] || l.level}</td><td>${esc(l.component)}</td><td>${esc(l.message)}</td></tr>`).join("");
  }

  function renderCommands() {
    $("#command-log tbody").innerHTML = S.commandLog.map((c) =>
      `<tr data-command-id="${c.id}" data-ack="${esc(c.ack || "")}"><td>${Live.hms(c.tai)}</td><td>${esc(c.component)}</td><td>${esc(c.name)}</td>
        <td class="${c.code < 0 ? "alert-text" : ""}">${esc(c.ack || "sent")}</td><td>${esc(c.result)}</td></tr>`).join("");
  }

  const NIGHT_TOPICS = new Set(["nextVisit", "endReadout", "imageInBuffer", "imageIngested", "ccdStage",
    "ccdProcessed", "alertsPublished", "visitLatency", "bufferStatus", "ingestStatus"]);

  function render() {
    timer = null;
    const all = dirty.has("all") || dirty.has("session") || dirty.has("connection");
    renderHeader();
    if (all || dirty.has("componentStatus") || ["heartbeat", "summaryState", "errorCode", "softwareVersions", "configurationApplied"].some((t) => dirty.has(t))) renderComponents();
    if (all || dirty.has("alarm") || dirty.has("commands")) renderAlarms();
    if (all || [...dirty].some((t) => NIGHT_TOPICS.has(t))) renderNight();
    if (all || dirty.has("nextVisit") || dirty.has("predictedSchedule")) renderNextVisit();
    if (all || dirty.has("logMessage")) renderLogs();
    if (all || dirty.has("commands")) renderCommands();
    dirty = new Set();
  }

  Live.listeners.push((what) => {
    dirty.add(what);
    if (!timer) timer = setTimeout(render, 100);
  });

  document.addEventListener("click", async (e) => {
    const t = e.target;
    if (t.dataset.cmd === "setLogLevel") {
      const level = Number(document.querySelector(`select.level[data-component="${t.dataset.component}"]`).value);
      await Live.command(t.dataset.component, "setLogLevel", { level });
    } else if (t.dataset.cmd) {
      await Live.command(t.dataset.component, t.dataset.cmd);
    } else if (t.classList.contains("ack")) {
      await Live.alarmAction(t.dataset.alarm, "acknowledge", { severity: t.dataset.severity });
    } else if (t.classList.contains("mute")) {
      const duration = Number(document.querySelector(`select.mute-for[data-alarm="${t.dataset.alarm}"]`).value);
      await Live.alarmAction(t.dataset.alarm, "mute", { duration, severity: "CRITICAL" });
    } else if (t.classList.contains("unmute")) {
      await Live.alarmAction(t.dataset.alarm, "unmute");
    }
  });
  document.addEventListener("change", (e) => {
    const t = e.target;
    if (t.classList.contains("level")) chosen.level[t.dataset.component] = t.value;
    if (t.classList.contains("mute-for")) chosen.mute[t.dataset.alarm] = t.value;
  });
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    Live.signIn($("#token").value.trim());
    $("#token").value = "";
  });
  $("#signout").addEventListener("click", () => Live.signIn(""));
  $("#log-level").addEventListener("change", renderLogs);
  $("#log-component").addEventListener("change", renderLogs);
  $("#fp-visit").addEventListener("change", renderNight);
  window.addEventListener("resize", () => { dirty.add("all"); render(); });
  setInterval(renderClock, 500);
  renderClock();
  window.dmcs = Live;
  Live.connect();
})();
