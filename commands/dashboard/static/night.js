"use strict";

// The page's copy of the night, kept as commands/dashboard/night.py keeps the server's.
const Night = (() => {
  const LIMITS = { visits: 60, latency: 5000, alerts: 20000, sky: 5000, buffer: 3600, logs: 500 };
  const push = (list, item, limit) => { list.push(item); if (list.length > limit) list.splice(0, list.length - limit); };

  function visit(night, number) {
    if (number === undefined || number === null) return null;
    let v = night.visits.find((x) => x.visit === number);
    if (!v) {
      v = { visit: number, ccds: {}, nAlerts: 0, alertsFromCcds: 0, alertsReported: null,
        latencySeconds: null, withinBudget: null, band: "", ra: null, dec: null, camera: "" };
      push(night.visits, v, LIMITS.visits);
    }
    return v;
  }

  function stage(night, d, name, tai) {
    const v = visit(night, d.visit), index = night.stages.indexOf(name);
    if (!v || index < 0 || d.detector === undefined) return;
    const ccd = v.ccds[String(d.detector)] || (v.ccds[String(d.detector)] = { stage: -1, status: 0, tai });
    if (index > ccd.stage) { ccd.stage = index; ccd.tai = tai; }
  }

  function apply(night, event) {
    const d = event.data;
    switch (event.topic) {
      case "nextVisit": {
        const v = visit(night, d.visit);
        if (v) { v.band = d.band || ""; v.camera = d.camera || ""; v.ra = d.ra; v.dec = d.dec; push(night.skyVisits, [v.visit, d.ra, d.dec, v.band], LIMITS.sky); }
        break;
      }
      case "endReadout": {
        const v = visit(night, d.visit);
        if (v && d.camera) v.camera = d.camera;
        for (const det of d.detectors || []) stage(night, { visit: d.visit, detector: det }, "endReadout", event.tai);
        break;
      }
      case "imageInBuffer": stage(night, d, "inBuffer", event.tai); break;
      case "imageIngested": stage(night, d, "ingested", event.tai); break;
      case "ccdStage": stage(night, d, d.stage, event.tai); break;
      case "ccdProcessed": {
        const v = visit(night, d.visit);
        if (v && d.detector !== undefined) {
          const ccd = v.ccds[String(d.detector)] || (v.ccds[String(d.detector)] = { stage: -1, status: 0, tai: event.tai });
          ccd.status = d.statusCode || 0;
        }
        break;
      }
      case "alertsPublished": {
        stage(night, d, "alertsPublished", event.tai);
        const v = visit(night, d.visit);
        if (v) {
          v.alertsFromCcds += d.nAlerts || 0;
          v.nAlerts = v.alertsReported ?? v.alertsFromCcds;
        }
        for (const p of d.positions || []) push(night.alertPositions, [p[0], p[1]], LIMITS.alerts);
        break;
      }
      case "visitLatency": {
        const v = visit(night, d.visit);
        if (v && typeof d.latencySeconds === "number") {
          v.latencySeconds = d.latencySeconds;
          v.withinBudget = d.withinBudget ?? d.latencySeconds <= 60;
          if (d.nAlerts !== undefined) v.alertsReported = d.nAlerts;
          v.nAlerts = v.alertsReported ?? v.alertsFromCcds;
          push(night.latency, [event.tai, v.visit, d.latencySeconds], LIMITS.latency);
        }
        break;
      }
      case "bufferStatus":
        night.bufferStatus = d;
        push(night.buffer, [event.tai, d.fillFraction || 0, d.backlogCount || 0, d.backlogBytes || 0], LIMITS.buffer);
        break;
      case "ingestStatus": night.ingestStatus = d; break;
      case "logMessage":
        push(night.logs, { tai: event.tai, component: event.component, level: d.level ?? 20, message: d.message || "" }, LIMITS.logs);
        break;
    }
  }

  return { apply };
})();
