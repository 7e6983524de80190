"""The night as the dashboard shows it, folded from the pipeline's events (docs/events.md).

Per visit and CCD the furthest stage reached; per visit its alerts and latency; the latency
series; the summit buffer's fill and backlog; the sky positions of visits and alerts; the log
stream. Everything is bounded so that a long night costs a fixed amount of memory. The page
applies the same events to its copy (static/night.js) after starting from :meth:`to_json`.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from state.events import PROMPT_STAGES, Event

STAGES = PROMPT_STAGES
STAGE_INDEX = {name: i for i, name in enumerate(STAGES)}


@dataclass(frozen=True, slots=True)
class Limits:
    visits: int = 60
    latency_points: int = 5_000
    alert_positions: int = 20_000
    sky_visits: int = 5_000
    buffer_points: int = 3_600
    log_lines: int = 500


@dataclass(slots=True)
class Visit:
    visit: int
    ccds: dict[int, dict[str, Any]] = field(default_factory=dict)
    alerts_from_ccds: int = 0
    alerts_reported: int | None = None  # visitLatency's total wins over the per-CCD sum
    latency: float | None = None
    within_budget: bool | None = None
    band: str = ""
    ra: float | None = None
    dec: float | None = None
    camera: str = ""

    def stage(self, detector: int, stage: str, tai: float) -> None:
        index = STAGE_INDEX.get(stage)
        if index is None:
            return
        ccd = self.ccds.setdefault(detector, {"stage": -1, "status": 0, "tai": tai})
        if index > ccd["stage"]:
            ccd["stage"], ccd["tai"] = index, tai

    @property
    def n_alerts(self) -> int:
        """The same whichever of alertsPublished and visitLatency arrives first."""
        return self.alerts_from_ccds if self.alerts_reported is None else self.alerts_reported

    def to_json(self) -> dict[str, Any]:
        return {
            "visit": self.visit,
            "ccds": {str(d): c for d, c in sorted(self.ccds.items())},
            "nAlerts": self.n_alerts,
            "alertsFromCcds": self.alerts_from_ccds,
            "alertsReported": self.alerts_reported,
            "latencySeconds": self.latency,
            "withinBudget": self.within_budget,
            "band": self.band,
            "ra": self.ra,
            "dec": self.dec,
            "camera": self.camera,
        }


class Night:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.visits: OrderedDict[int, Visit] = OrderedDict()
        self.latency: deque[list[float]] = deque(maxlen=self.limits.latency_points)
        self.alert_positions: deque[list[float]] = deque(maxlen=self.limits.alert_positions)
        self.sky_visits: deque[list[Any]] = deque(maxlen=self.limits.sky_visits)
        self.buffer: deque[list[float]] = deque(maxlen=self.limits.buffer_points)
        self.logs: deque[dict[str, Any]] = deque(maxlen=self.limits.log_lines)
        self.buffer_status: dict[str, Any] = {}
        self.ingest_status: dict[str, Any] = {}

    def _visit(self, number: Any) -> Visit | None:
        try:
            visit = int(number)
        except (TypeError, ValueError, OverflowError):
            return None
        found = self.visits.get(visit)
        if found is None:
            found = self.visits[visit] = Visit(visit)
            while len(self.visits) > self.limits.visits:
                self.visits.popitem(last=False)
        return found

    def observe(self, event: Event) -> None:
        data = event.data
        match event.topic:
            case "nextVisit":
                visit = self._visit(data.get("visit"))
                if visit is not None:
                    visit.band = str(data.get("band", ""))
                    visit.camera = str(data.get("camera", ""))
                    visit.ra, visit.dec = _float(data.get("ra")), _float(data.get("dec"))
                    self.sky_visits.append([visit.visit, visit.ra, visit.dec, visit.band])
            case "endReadout":
                visit = self._visit(data.get("visit"))
                if visit is not None and data.get("camera"):
                    visit.camera = str(data["camera"])
                for detector in data.get("detectors") or []:
                    if visit is not None:
                        visit.stage(int(detector), "endReadout", event.tai)
            case "imageInBuffer" | "imageIngested" | "ccdStage":
                stage = {"imageInBuffer": "inBuffer", "imageIngested": "ingested"}.get(
                    event.topic, str(data.get("stage", ""))
                )
                self._stage(data, stage, event.tai)
            case "ccdProcessed":
                visit = self._visit(data.get("visit"))
                if visit is not None and "detector" in data:
                    ccd = visit.ccds.setdefault(
                        int(data["detector"]), {"stage": -1, "status": 0, "tai": event.tai}
                    )
                    ccd["status"] = int(data.get("statusCode", 0))
            case "alertsPublished":
                self._stage(data, "alertsPublished", event.tai)
                visit = self._visit(data.get("visit"))
                if visit is not None:
                    visit.alerts_from_ccds += int(data.get("nAlerts", 0))
                for position in data.get("positions") or []:
                    self.alert_positions.append([float(position[0]), float(position[1])])
            case "visitLatency":
                visit = self._visit(data.get("visit"))
                latency = _float(data.get("latencySeconds"))
                if visit is not None and latency is not None:
                    visit.latency = latency
                    visit.within_budget = bool(data.get("withinBudget", latency <= 60.0))
                    if "nAlerts" in data:
                        visit.alerts_reported = int(data["nAlerts"])
                    self.latency.append([event.tai, visit.visit, latency])
            case "bufferStatus":
                self.buffer_status = dict(data)
                self.buffer.append(
                    [
                        event.tai,
                        float(data.get("fillFraction", 0.0)),
                        int(data.get("backlogCount", 0)),
                        int(data.get("backlogBytes", 0)),
                    ]
                )
            case "ingestStatus":
                self.ingest_status = dict(data)
            case "logMessage":
                self.logs.append(
                    {
                        "tai": event.tai,
                        "component": event.component,
                        "level": int(data.get("level", 20)),
                        "message": str(data.get("message", "")),
                    }
                )

    def _stage(self, data: dict[str, Any], stage: str, tai: float) -> None:
        visit = self._visit(data.get("visit"))
        if visit is not None and "detector" in data:
            visit.stage(int(data["detector"]), stage, tai)

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": list(STAGES),
            "visits": [v.to_json() for v in self.visits.values()],
            "latency": list(self.latency),
            "alertPositions": list(self.alert_positions),
            "skyVisits": list(self.sky_visits),
            "buffer": list(self.buffer),
            "bufferStatus": self.buffer_status,
            "ingestStatus": self.ingest_status,
            "logs": list(self.logs),
        }


def _float(value: Any) -> float | None:
    try:
        number = None if value is None else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None
