// The live connection: WebSocket (dmcs.v1.json), snapshot on connect, per-topic sequence
// numbers (gap counter, resync), automatic reconnect, commands and alarm actions.
"use strict";

const Live = (() => {
  const TAI_MINUS_UTC = 37;
  // What the page shows (commands/dashboard/service.py PAGE_TOPICS; a test keeps them equal).
  const PAGE_TOPICS = ["alarm", "componentStatus", "summaryState", "errorCode", "softwareVersions",
    "configurationApplied", "logMessage", "nextVisit", "predictedSchedule", "endReadout",
    "imageInBuffer", "imageIngested", "ccdStage", "ccdProcessed", "alertsPublished",
    "visitLatency", "bufferStatus", "ingestStatus", "reprocessProgress", "reprocessFailure"];
  const state = {
    token: sessionStorage.getItem("dmcs-token") || "",
    session: { identity: "", commandable: [] },
    components: {},
    alarms: {},
    counts: { active: 0, acknowledged: 0, stale: 0, muted: 0 },
    night: null,
    schedule: null,
    batch: null,
    lastSeq: {},
    gaps: 0,
    gapsByTopic: {},
    dropped: 0,
    resyncs: 0,
    connected: false,
    reconnects: 0,
    clockOffset: 0, // server TAI minus local clock, seconds
    commandLog: [],
  };
  const listeners = [];
  let ws = null, buffer = null, nextId = 1, backoff = 0.5, resyncTimer = null;
  const pending = new Map();

  const taiNow = () => Date.now() / 1000 + state.clockOffset + (state.clockOffset ? 0 : TAI_MINUS_UTC);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  function hms(tai, utc = false) {
    const d = new Date(((utc ? tai - TAI_MINUS_UTC : tai)) * 1000);
    return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }
  function isoDay(tai, utc = false) {
    const d = new Date(((utc ? tai - TAI_MINUS_UTC : tai)) * 1000);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${hms(tai, utc)}`;
  }

  function changed(what) {
    for (const fn of listeners) fn(what);
  }

  function authHeaders() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  async function getJson(path) {
    const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // ------------------------------------------------------------------ connection
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = state.token ? "?token=" + encodeURIComponent(state.token) : "";
    ws = new WebSocket(`${scheme}//${location.host}/ws${query}`, ["dmcs.v1.json"]);
    const socket = ws;
    socket.onopen = () => {
      backoff = 0.5;
      state.connected = true;
      buffer = buffer || []; // hold events until the snapshot is in
      socket.send(JSON.stringify({ v: 1, op: "subscribe", id: 1, topics: PAGE_TOPICS }));
      changed("connection");
    };
    socket.onmessage = (message) => onFrame(JSON.parse(message.data));
    socket.onclose = () => {
      if (ws !== socket) return;
      state.connected = false;
      failPending("connection lost");
      changed("connection");
      setTimeout(() => { state.reconnects++; connect(); }, backoff * 1000);
      backoff = Math.min(backoff * 2, 5);
    };
  }

  function reconnect() {
    const old = ws;
    ws = null;
    state.connected = false;
    if (old) old.close();
    connect();
  }

  // Start from the server's snapshot; events that arrive meanwhile wait and are applied after
  // it when they are newer than what it already folded in. One resync at a time: a second one
  // asked for meanwhile runs after it (two in flight could apply an older snapshot last).
  let resyncing = false, resyncAgain = false;

  async function resync() {
    clearTimeout(resyncTimer);
    resyncTimer = null;
    if (resyncing) {
      resyncAgain = true;
      return;
    }
    resyncing = true;
    buffer = buffer || [];
    try {
      const [snap, session] = await Promise.all([
        getJson("/api/v1/dashboard/snapshot"),
        getJson("/api/v1/dashboard/session"),
      ]);
      state.resyncs++;
      applySnapshot(snap);
      state.session = session;
    } catch (error) {
      console.warn("snapshot failed", error);
      resyncing = false;
      resyncTimer = setTimeout(resync, 1000);
      return;
    }
    const waiting = buffer;
    buffer = null;
    resyncing = false;
    for (const [event, live] of waiting) applyEvent(event, live);
    changed("all");
    if (resyncAgain) {
      resyncAgain = false;
      resync();
    }
  }

  function scheduleResync() {
    if (!resyncTimer) resyncTimer = setTimeout(resync, 250);
  }

  function applySnapshot(snap) {
    state.clockOffset = snap.tai - Date.now() / 1000;
    state.lastSeq = { ...snap.seqs };
    snapshotSeqs = snap.seqs; // open holes stay open: what this page missed is still counted
    state.components = Object.fromEntries(snap.components.map((c) => [c.name, c]));
    state.alarms = Object.fromEntries(snap.alarms.map((a) => [a.name, a]));
    state.counts = snap.alarmCounts;
    state.night = snap.night;
    state.schedule = snap.schedule;
    state.batch = snap.batch;
  }

  function onFrame(frame) {
    switch (frame.op) {
      case "event":
        if (buffer) buffer.push([frame.event, !frame.snapshot]);
        else applyEvent(frame.event, !frame.snapshot);
        break;
      case "subscribed": // fetched only now, so no event falls between snapshot and stream
        resync();
        break;
      case "ack":
        onAck(frame.id, frame.ack);
        break;
      case "dropped":
        state.dropped = frame.count;
        scheduleResync();
        changed("connection");
        break;
      case "error":
        if (pending.has(frame.id)) onAck(frame.id, { code: -302, result: frame.message });
        break;
    }
  }

  // Per-topic sequence numbers. Events of one topic can arrive slightly out of order (the
  // bus does not promise order across a publisher's calls), so a hole waits REORDER_MS for its
  // late event before it counts as a gap and triggers a resync; a late event fills its hole.
  // Returns false for an event already folded in.
  const REORDER_MS = 2000, MAX_HOLES = 1000;
  const holes = new Map(); // "component/topic#seq" -> deadline (ms)
  let snapshotSeqs = {};

  function checkSeq(event, live) {
    const key = event.component + "/" + event.topic;
    // A topic the snapshot did not know started after it: its numbering starts at 1.
    const last = state.lastSeq[key] ?? 0;
    if (event.seq === last + 1) {
      state.lastSeq[key] = event.seq;
      return true;
    }
    if (event.seq > last + 1) {
      const missing = event.seq - last - 1;
      if (live && missing > MAX_HOLES) {
        state.gaps += missing;
        state.gapsByTopic[key] = (state.gapsByTopic[key] || 0) + missing;
        scheduleResync();
      } else if (live) {
        const deadline = Date.now() + REORDER_MS;
        for (let seq = last + 1; seq < event.seq; seq++) holes.set(key + "#" + seq, deadline);
      }
      state.lastSeq[key] = event.seq;
      return true;
    }
    // Late, not lost; applied unless a snapshot since then already covers it.
    if (holes.delete(key + "#" + event.seq)) return event.seq > (snapshotSeqs[key] ?? 0);
    if (event.seq === 1) { // not a hole: the publisher restarted and numbers from 1 again
      state.lastSeq[key] = 1;
      return true;
    }
    return false;
  }

  setInterval(() => {
    const now = Date.now();
    let lost = 0;
    for (const [hole, deadline] of holes) {
      if (deadline <= now) {
        holes.delete(hole);
        lost++;
        const key = hole.slice(0, hole.lastIndexOf("#"));
        state.gapsByTopic[key] = (state.gapsByTopic[key] || 0) + 1;
      }
    }
    if (lost) {
      state.gaps += lost;
      scheduleResync();
      changed("connection");
    }
  }, 500);

  function applyEvent(event, live) {
    if (!checkSeq(event, live)) return;
    const c = state.components[event.component];
    const d = event.data;
    if (event.component === "Watcher") {
      if (event.topic === "alarm") {
        state.alarms[d.name] = d;
        state.counts = d.counts;
      } else if (event.topic === "componentStatus") {
        state.components = Object.fromEntries(d.components.map((row) => [row.name, row]));
      }
      return changed(event.topic);
    }
    if (c) {
      switch (event.topic) {
        case "heartbeat": c.summaryState = d.state; c.heartbeatAge = 0; c.stale = false; break;
        case "summaryState": c.summaryState = d.summaryState; c.commandedState = d.commandedState;
          if (d.summaryState !== "FAULT") { c.errorCode = 0; c.errorReport = ""; } break;
        case "errorCode": c.errorCode = d.errorCode; c.errorReport = d.errorReport; break;
        case "softwareVersions": c.version = d.cscVersion; break;
        case "configurationApplied": c.configuration = d.configurations; break;
      }
    }
    if (event.component === "Reprocess") {
      if (state.batch) Batch.apply(state.batch, event);
      return changed(event.topic);
    }
    if (state.night) Night.apply(state.night, event);
    if (event.topic === "nextVisit" && state.schedule) state.schedule.nextVisit = { ...d, publishedTai: event.tai };
    if (event.topic === "predictedSchedule" && state.schedule)
      state.schedule.predictedSchedule = { publishedTai: event.tai, visits: d.visits || [] };
    changed(event.topic);
  }

  // -------------------------------------------------------------------- commands
  function command(component, name, params = {}) {
    return new Promise((resolve) => {
      const id = nextId++;
      const entry = { id, component, name, tai: taiNow(), code: 300, result: "sent" };
      state.commandLog.unshift(entry);
      state.commandLog.length = Math.min(state.commandLog.length, 30);
      pending.set(id, { entry, resolve });
      if (!ws || ws.readyState !== WebSocket.OPEN) return onAck(id, { code: -302, result: "not connected" });
      ws.send(JSON.stringify({ v: 1, op: "command", id, component, name, params, timeout: 30 }));
      changed("commands");
    });
  }

  const ACKS = { 300: "CMD_ACK", 301: "CMD_INPROGRESS", 303: "CMD_COMPLETE", [-300]: "CMD_NOPERM",
    [-302]: "CMD_FAILED", [-303]: "CMD_ABORTED", [-304]: "CMD_TIMEOUT", [-305]: "CMD_REJECTED" };

  function onAck(id, ack) {
    const waiting = pending.get(id);
    if (!waiting) return;
    waiting.entry.code = ack.code;
    waiting.entry.ack = ACKS[ack.code] || String(ack.code);
    waiting.entry.result = ack.result || "";
    if (ack.code === 303 || ack.code < 0) {
      pending.delete(id);
      waiting.resolve(waiting.entry);
    }
    changed("commands");
  }

  function failPending(reason) {
    for (const id of [...pending.keys()]) onAck(id, { code: -302, result: reason });
  }

  async function alarmAction(name, action, body) {
    const response = await fetch(`/api/v1/alarms/${encodeURIComponent(name)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body || {}),
    });
    const result = await response.json();
    const entry = { id: nextId++, component: name, name: action, tai: taiNow(), code: result.code,
      ack: ACKS[result.code] || String(result.code), result: result.reason || "" };
    state.commandLog.unshift(entry);
    if (result.alarm) state.alarms[name] = result.alarm;
    changed("commands");
    return entry;
  }

  async function signIn(token) {
    state.token = token;
    if (token) sessionStorage.setItem("dmcs-token", token);
    else sessionStorage.removeItem("dmcs-token");
    try {
      state.session = await getJson("/api/v1/dashboard/session");
    } catch (error) {
      state.token = "";
      sessionStorage.removeItem("dmcs-token");
      state.session = { identity: "", commandable: [], error: "unknown token" };
    }
    reconnect();
    changed("session");
  }

  const canCommand = (component) => state.session.commandable.includes(component);

  return { state, listeners, connect, command, alarmAction, signIn, canCommand, taiNow, hms, isoDay,
    TAI_MINUS_UTC };
})();
