"""The nightly Performance Report (LSE-61 DMS-REQ-0099) as a JSON-ready dict.

Counts are per image (one CCD of one visit) and per visit. A failed attempt is *recoverable*
when a later attempt processed the CCD (a retry before its APDB write); a CCD is
*unrecoverable* when its final outcome is ``failed`` or ``abandoned`` (its last attempt is
listed; its ``recovery`` says what happens next, e.g. ``left for batch``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from base.prompt_records import STATUSES, Attempt, NightRecords, latency_summary

#: (pipeline, the stage that marks an image as through it)
PIPELINES = (
    ("Summit buffer", "inBuffer"),
    ("Ingest (archived in the repository)", "ingested"),
    ("Preload (calibrations, template, APDB)", "preloadReady"),
    ("CCD processing (ISR → DIASources)", "diaSourcesMeasured"),
    ("Association", "associated"),
    ("APDB store", "apdbStored"),
    ("Alert production", "alertsPublished"),
)
FAILED = ("failed", "abandoned")
EMPTY_MESSAGE = "No visits, stage times or CCD outcomes were recorded for this night."


def _attempt_dict(a: Attempt) -> dict[str, Any]:
    return {
        "visit": a.visit,
        "detector": a.detector,
        "attempt": a.attempt,
        "status": a.status,
        "failureType": a.failure_type,
        "reason": a.reason,
        "recovery": a.recovery,
    }


def _failures(night: NightRecords) -> dict[str, Any]:
    final = {(o.visit, o.detector): o for o in night.outcomes}
    attempts = list(night.attempts)
    logged = {(a.visit, a.detector, a.attempt) for a in attempts}
    for o in night.outcomes:
        if (o.visit, o.detector, o.attempt) not in logged:
            logged.add((o.visit, o.detector, o.attempt))
            attempts.append(
                Attempt(o.visit, o.detector, o.attempt, o.status, o.failure_type, o.reason,
                        o.recovery)
            )  # fmt: skip
        if o.status == "processed" and o.attempt > 1:
            # earlier attempts without a log row (records built by hand): their type is unknown
            for k in range(1, o.attempt):
                if (o.visit, o.detector, k) not in logged:
                    attempts.append(
                        Attempt(o.visit, o.detector, k, "failed", "unknown", "", "retried")
                    )
    recoverable, unrecoverable = [], []
    for a in sorted(attempts, key=lambda a: (a.visit, a.detector, a.attempt)):
        end = final.get((a.visit, a.detector))
        if a.status not in FAILED or end is None:
            continue
        if end.status == "processed":
            recoverable.append(_attempt_dict(a))
        elif a.attempt == end.attempt and end.status in FAILED:
            unrecoverable.append(_attempt_dict(a))
    by_type: dict[str, dict[str, Any]] = {}
    for kind, rows in (("recoverable", recoverable), ("unrecoverable", unrecoverable)):
        for r in rows:
            t = by_type.setdefault(
                r["failureType"] or "unknown",
                {"recoverable": 0, "unrecoverable": 0, "recoveries": Counter()},
            )
            t[kind] += 1
            t["recoveries"][r["recovery"]] += 1
    return {
        "nRecoverable": len(recoverable),
        "nRecoverableObservations": len({(r["visit"], r["detector"]) for r in recoverable}),
        "nUnrecoverable": len(unrecoverable),
        "byType": [
            {"failureType": k, **{**v, "recoveries": dict(sorted(v["recoveries"].items()))}}
            for k, v in sorted(by_type.items())
        ],
        "recoverable": recoverable,
        "unrecoverable": unrecoverable,
    }


def _deferral(night: NightRecords) -> dict[str, Any]:
    """CCDs and visits the overload policy deferred, and how many the catch-up has done."""
    deferred = {(a.visit, a.detector) for a in night.attempts if a.status == "deferred"}
    deferred |= {(o.visit, o.detector) for o in night.outcomes if o.status == "deferred"}
    final = {(o.visit, o.detector): o.status for o in night.outcomes}
    caught_up = {k for k in deferred if final.get(k) == "processed"}
    waiting = deferred - caught_up
    return {
        "ccdsDeferred": len(deferred),
        "visitsDeferred": len({v for v, _ in deferred}),
        "ccdsCaughtUp": len(caught_up),
        "visitsCaughtUp": len({v for v, _ in deferred} - {v for v, _ in waiting}),
        "ccdsAwaitingCatchUp": len(waiting),
    }


def performance_report(night: NightRecords, budget_s: float = 60.0) -> dict[str, Any]:
    """Observations processed per pipeline, failures by type and recovery, images vs taken."""
    visits = night.visit_map()
    times = night.ccd_times()
    report: dict[str, Any] = {
        "report": "Performance Report",
        "requirement": "DMS-REQ-0099",
        "dayObs": night.day_obs,
        "empty": night.empty,
        "message": EMPTY_MESSAGE if night.empty else None,
    }
    seen_per_visit = Counter(times.visit.tolist())
    all_visits = sorted(set(visits) | set(seen_per_visit))
    taken = sum(visits[v].n_detectors if v in visits else seen_per_visit[v] for v in all_visits)
    mjd = [v.obs_mjd for v in night.visits]
    report["night"] = {
        "visits": len(all_visits),
        "visitsWithoutVisitRecord": len(set(seen_per_visit) - set(visits)),
        "cameras": sorted({v.camera for v in night.visits}),
        "bands": dict(sorted(Counter(v.band for v in night.visits).items())),
        "firstMjd": min(mjd) if mjd else None,
        "lastMjd": max(mjd) if mjd else None,
    }
    done = {stage: np.isfinite(times.stage(stage)) for _, stage in PIPELINES}
    done["endReadout"] = np.isfinite(times.stage("endReadout"))
    report["images"] = {
        "taken": taken,
        "readOut": int(done["endReadout"].sum()),
        "inBuffer": int(done["inBuffer"].sum()),
        "ingested": int(done["ingested"].sum()),
        "notIngested": taken - int(done["ingested"].sum()),
    }
    ids, inverse = np.unique(times.visit, return_inverse=True)
    expected = np.array(
        [visits[v].n_detectors if v in visits else seen_per_visit[v] for v in ids.tolist()],
        np.int64,
    )
    rows = []
    for name, stage in PIPELINES:
        ok = done[stage]
        per_visit = np.bincount(inverse, weights=ok, minlength=len(ids))
        complete = int((per_visit >= expected).sum()) if len(ids) else 0
        rows.append(
            {
                "pipeline": name,
                "stage": stage,
                "imagesExpected": taken,
                "imagesDone": int(ok.sum()),
                "fraction": float(ok.sum() / taken) if taken else None,
                "visitsComplete": complete,
            }
        )
    report["pipelines"] = rows
    status = Counter(o.status for o in night.outcomes)
    report["outcomes"] = {
        **{s: status.get(s, 0) for s in STATUSES},
        "noOutcome": max(taken - len(night.outcomes), 0),
        "retriedCcds": sum(1 for o in night.outcomes if o.attempt > 1),
    }
    report["products"] = {
        "diaSources": sum(o.n_dia_sources for o in night.outcomes),
        "alerts": sum(o.n_alerts for o in night.outcomes),
    }
    report["deferral"] = _deferral(night)
    report["failures"] = _failures(night)
    report["latency"] = latency_summary(night, budget_s).to_dict()
    return report
