"""Batch reprocessing as the dashboard shows it, folded from ``Reprocess`` telemetry.

``reprocessProgress`` and ``reprocessFailure`` (docs/events.md, "Batch reprocessing") are sent
through the gateway by ``dmcs reprocess``. Per run: the latest progress, the TAI of its latest
event (``updatedTai``) and its recent failures, newest first. Runs and failures are bounded. A
run still ``running`` whose last event is older than the stale limit is reported ``stale``: its
driver may have died without saying so. The page applies the same events to its copy
(static/batch.js) after starting from :meth:`BatchRuns.to_json`.

A malformed payload raises ``ValueError``, ``TypeError`` or ``KeyError`` and changes nothing;
:class:`commands.dashboard.service.Dashboard` counts it as malformed.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from state.events import Event

MODES = ("release", "catchUp")
PHASES = ("ccd", "region", "characterize")
STATUSES = ("running", "done", "failed", "interrupted")
UNIT = re.compile(r"ccd:[0-9]+/[0-9]+|region:.+|characterize", re.S)
#: Reasons are arbitrary text from a worker (tracebacks included); kept short and bounded.
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class BatchLimits:
    runs: int = 20
    failures_per_run: int = 50
    stale_seconds: float = 30.0


@dataclass(slots=True)
class Run:
    run: str
    updated_tai: float
    progress: dict[str, Any] | None = None
    progress_tai: float | None = None
    failures: deque[dict[str, Any]] = field(default_factory=deque)

    def to_json(self, now: float, stale_seconds: float) -> dict[str, Any]:
        progress = self.progress or {}
        status = progress.get("status")
        return {
            "run": self.run,
            "mode": progress.get("mode"),
            "phase": progress.get("phase"),
            "done": progress.get("done"),
            "total": progress.get("total"),
            "failed": progress.get("failed"),
            "ratePerSecond": progress.get("ratePerSecond"),
            "etaSeconds": progress.get("etaSeconds"),
            "status": status,
            "startedTai": progress.get("startedTai"),
            "workers": progress.get("workers"),
            "progressTai": self.progress_tai,
            "updatedTai": self.updated_tai,
            "stale": status == "running" and now - self.updated_tai > stale_seconds,
            "failures": list(self.failures),
        }


class BatchRuns:
    def __init__(self, limits: BatchLimits | None = None) -> None:
        self.limits = limits or BatchLimits()
        self.runs: OrderedDict[str, Run] = OrderedDict()  # least recently updated first

    def observe(self, event: Event) -> None:
        match event.topic:
            case "reprocessProgress":
                progress = parse_progress(event.data)
                run = self._run(progress["run"], event.tai)
                # The bus may deliver a run's events out of order: a late progress is older news.
                if run.progress_tai is None or event.tai >= run.progress_tai:
                    run.progress, run.progress_tai = progress, event.tai
            case "reprocessFailure":
                failure = parse_failure(event.data)
                run = self._run(failure["run"], event.tai)
                run.failures.appendleft({"tai": event.tai, **failure})
                while len(run.failures) > self.limits.failures_per_run:
                    run.failures.pop()

    def _run(self, name: str, tai: float) -> Run:
        run = self.runs.get(name)
        if run is None:
            run = self.runs[name] = Run(name, tai)
        elif tai > run.updated_tai:
            run.updated_tai = tai
        order = sorted(self.runs.values(), key=lambda r: r.updated_tai)
        self.runs = OrderedDict((r.run, r) for r in order[-self.limits.runs :])
        return run

    def to_json(self, now: float) -> dict[str, Any]:
        stale = self.limits.stale_seconds
        return {
            "staleSeconds": stale,
            "limits": {"runs": self.limits.runs, "failuresPerRun": self.limits.failures_per_run},
            "runs": [r.to_json(now, stale) for r in reversed(self.runs.values())],
        }


def parse_progress(data: dict[str, Any]) -> dict[str, Any]:
    """The contract's ``reprocessProgress`` fields, checked; extra fields are left out."""
    return {
        "run": _text(data, "run"),
        "mode": _choice(data, "mode", MODES),
        "phase": _choice(data, "phase", PHASES),
        "done": _count(data, "done"),
        "total": _count(data, "total"),
        "failed": _count(data, "failed"),
        "ratePerSecond": _number_or_none(data, "ratePerSecond"),
        "etaSeconds": _number_or_none(data, "etaSeconds"),
        "status": _choice(data, "status", STATUSES),
        "startedTai": _number_or_none(data, "startedTai"),
        "workers": None if data.get("workers") is None else _count(data, "workers"),
    }


def parse_failure(data: dict[str, Any]) -> dict[str, Any]:
    unit = _text(data, "unit")
    if not UNIT.fullmatch(unit):
        raise ValueError(
            f"unit {unit!r} is not 'ccd:<visit>/<detector>', 'region:<tile>' or 'characterize'"
        )
    reason = data["reason"]
    if not isinstance(reason, str):
        raise TypeError(f"reason must be text, not {type(reason).__name__}")
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 1] + "…"
    final = data["final"]
    if not isinstance(final, bool):
        raise TypeError(f"final must be true or false, not {final!r}")
    # attempt 0: the unit was never tried (catch-up finds no raw for it).
    attempt = _count(data, "attempt")
    return {"run": _text(data, "run"), "unit": unit, "reason": reason, "attempt": attempt,
            "final": final}  # fmt: skip


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be text, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{key} is empty")
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = _text(data, key)
    if value not in allowed:
        raise ValueError(f"{key} {value!r} is not one of {', '.join(allowed)}")
    return value


def _count(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 3.0 from a JSON writer that knows only numbers
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be a whole number, not {value!r}")
    if value < 0:
        raise ValueError(f"{key} must not be negative, not {value}")
    return value


def _number_or_none(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number or null, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite, not {value}")
    return float(value)
