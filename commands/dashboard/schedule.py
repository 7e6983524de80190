"""The next visit and the predicted schedule (DMS-REQ-0353), from ``nextVisit`` and
``predictedSchedule``, with every time given as TAI and UTC."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from state.clock import TAI_MINUS_UTC, mjd_tai, tai_now, tai_to_utc
from state.events import Event


def iso_utc(tai: float) -> str:
    """TAI seconds → the UTC instant in ISO 8601 (``…Z``)."""
    moment = datetime.fromtimestamp(tai_to_utc(tai), tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_tai(tai: float) -> str:
    """TAI seconds in ISO 8601, labelled TAI (not a UTC instant)."""
    moment = datetime.fromtimestamp(tai, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", " TAI")


def _timed(visit: dict[str, Any]) -> dict[str, Any]:
    out = dict(visit)
    mjd = visit.get("startMjd")
    if isinstance(mjd, int | float) and not isinstance(mjd, bool):
        try:
            start = mjd_tai(float(mjd))
            out.update(startTai=start, startTaiIso=iso_tai(start), startUtc=iso_utc(start))
        except (OverflowError, ValueError, OSError):  # the contract bounds it; never a 500 here
            out["startMjd"] = None
    return out


@dataclass(slots=True)
class Schedule:
    next_visit: dict[str, Any] | None = None
    next_visit_tai: float | None = None
    predicted: list[dict[str, Any]] = field(default_factory=list)
    predicted_tai: float | None = None

    def observe(self, event: Event) -> bool:
        """Take a camera ``nextVisit`` or OCS ``predictedSchedule``; True when it was one."""
        if event.topic == "nextVisit":
            self.next_visit, self.next_visit_tai = dict(event.data), event.tai
            return True
        if event.topic == "predictedSchedule":
            visits = event.data.get("visits")
            if not isinstance(visits, list):
                raise ValueError("predictedSchedule.visits must be a list")
            self.predicted = [dict(v) for v in visits if isinstance(v, dict)]
            self.predicted_tai = event.tai
            return True
        return False

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = tai_now() if now is None else now
        return {
            "tai": now,
            "taiIso": iso_tai(now),
            "utc": iso_utc(now),
            "taiMinusUtc": TAI_MINUS_UTC,
            "nextVisit": None
            if self.next_visit is None
            else {**_timed(self.next_visit), "publishedTai": self.next_visit_tai},
            "predictedSchedule": {
                "publishedTai": self.predicted_tai,
                "visits": [_timed(v) for v in self.predicted],
            },
        }
