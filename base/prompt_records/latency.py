"""Latency of prompt processing from the stage records: end of readout → alerts published.

* per CCD: ``alertsPublished - endReadout`` of that CCD (its own endReadout row, else the visit's);
* per visit: the latest ``alertsPublished`` of its CCDs minus the earliest ``endReadout`` (the
  ``visitLatency`` event's definition: the max over its CCDs);
* the share of visits within the budget (60 s, LSE-61 OTT1), and the share of alerts, which is
  what OTT1 actually bounds (98 % of alerts within 60 s), weighted by each CCD's ``n_alerts``;
* the per-stage breakdown: for each step to stage ``s``, the time from the latest earlier stage
  to ``s``, per CCD, clipped at 0 (a stage done before the ones listed before it -- the preload,
  run ahead of the exposure -- was not on the critical path), then its median and p95 over CCDs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .model import STAGE_INDEX, STAGES, NightRecords

BUDGET_S = 60.0


@dataclass(frozen=True)
class Distribution:
    n: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, values: NDArray[np.float64]) -> Distribution:
        v = values[np.isfinite(values)]
        if not len(v):
            return cls(0, None, None, None)
        p50, p95 = np.percentile(v, [50, 95])
        return cls(len(v), float(p50), float(p95), float(v.max()))


@dataclass(frozen=True)
class StageStep:
    stage: str  # the step ends at this stage
    after: str  # ... and starts at this one (the stage listed before it)
    n: int
    median_s: float | None
    p95_s: float | None


@dataclass(frozen=True)
class LatencySummary:
    budget_s: float
    ccd: Distribution
    visit: Distribution
    n_visits_within_budget: int
    visit_share_within_budget: float | None
    alert_share_within_budget: float | None
    steps: tuple[StageStep, ...]
    preload_lead_median_s: float | None  # endReadout - preloadReady (> 0: ready in time)
    visit_latency: dict[int, float]  # visit -> seconds
    #: visit -> the least lead of its CCDs' preloads (< 0: a CCD's preload was late)
    preload_lead_by_visit: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the camelCase keys of the events and reports."""
        return {
            "budgetSeconds": self.budget_s,
            "ccd": asdict(self.ccd),
            "visit": asdict(self.visit),
            "nVisitsWithinBudget": self.n_visits_within_budget,
            "visitShareWithinBudget": self.visit_share_within_budget,
            "alertShareWithinBudget": self.alert_share_within_budget,
            "steps": [
                {
                    "stage": s.stage,
                    "after": s.after,
                    "n": s.n,
                    "medianSeconds": s.median_s,
                    "p95Seconds": s.p95_s,
                }
                for s in self.steps
            ],
            "preloadLeadMedianSeconds": self.preload_lead_median_s,
            "visitLatency": {str(k): v for k, v in self.visit_latency.items()},
            "preloadLeadByVisit": {str(k): v for k, v in self.preload_lead_by_visit.items()},
        }


def _step_durations(tai: NDArray[np.float64]) -> NDArray[np.float64]:
    """(n_ccd, n_stages - 1): time of stage s minus the latest recorded earlier stage, >= 0."""
    n = tai.shape[0]
    out = np.full((n, tai.shape[1] - 1), np.nan)
    latest = tai[:, 0].copy()
    for s in range(1, tai.shape[1]):
        t = tai[:, s]
        ok = np.isfinite(t) & np.isfinite(latest)
        out[ok, s - 1] = np.maximum(t[ok] - latest[ok], 0.0)
        latest = np.where(np.isfinite(latest), np.fmax(latest, t), t)
    return out


def latency_summary(night: NightRecords, budget_s: float = BUDGET_S) -> LatencySummary:
    """The latency figures of ``night`` (see the module docstring for the definitions)."""
    times = night.ccd_times()
    start = times.stage("endReadout")
    end = times.stage("alertsPublished")
    ccd_lat = end - start

    ids, inverse = np.unique(times.visit, return_inverse=True)
    first = np.full(len(ids), np.inf)
    last = np.full(len(ids), -np.inf)
    np.fmin.at(first, inverse, start)
    np.fmax.at(last, inverse, end)
    span = last - first
    ok = np.isfinite(span)
    visit_latency = dict(zip(ids[ok].tolist(), span[ok].tolist(), strict=True))
    vis = np.array(list(visit_latency.values()), np.float64)
    n_within = int((vis <= budget_s).sum())

    n_alerts = {(o.visit, o.detector): o.n_alerts for o in night.outcomes}
    weights = np.array(
        [
            n_alerts.get((int(v), int(d)), 0)
            for v, d in zip(times.visit, times.detector, strict=True)
        ],
        np.float64,
    )
    timed = np.isfinite(ccd_lat)
    total = weights[timed].sum()
    alert_share = float(weights[timed & (ccd_lat <= budget_s)].sum() / total) if total else None

    durations = _step_durations(times.tai) if len(times) else np.empty((0, len(STAGES) - 1))
    steps = []
    for s in range(1, len(STAGES)):
        d = durations[:, s - 1]
        d = d[np.isfinite(d)]
        steps.append(
            StageStep(
                STAGES[s],
                STAGES[s - 1],
                len(d),
                float(np.median(d)) if len(d) else None,
                float(np.percentile(d, 95)) if len(d) else None,
            )
        )
    lead = start - times.tai[:, STAGE_INDEX["preloadReady"]]
    least = np.full(len(ids), np.inf)
    np.fmin.at(least, inverse, np.where(np.isfinite(lead), lead, np.inf))
    timed_lead = np.isfinite(least)
    lead_by_visit = dict(zip(ids[timed_lead].tolist(), least[timed_lead].tolist(), strict=True))
    lead = lead[np.isfinite(lead)]
    return LatencySummary(
        budget_s=budget_s,
        ccd=Distribution.of(ccd_lat),
        visit=Distribution.of(vis),
        n_visits_within_budget=n_within,
        visit_share_within_budget=n_within / len(vis) if len(vis) else None,
        alert_share_within_budget=alert_share,
        steps=tuple(steps),
        preload_lead_median_s=float(np.median(lead)) if len(lead) else None,
        visit_latency=visit_latency,
        preload_lead_by_visit=lead_by_visit,
    )
