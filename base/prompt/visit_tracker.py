"""Which CCDs of each visit are finished, and the visit's alert latency when all are."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Visit:
    detectors: set[int]
    end_readout_tai: float | None = None
    published: dict[int, float] = field(default_factory=dict)  # detector -> latency
    failed: set[int] = field(default_factory=set)
    alerts: int = 0
    reported: bool = False


@dataclass(frozen=True)
class VisitLatency:
    visit: int
    n_alerts: int
    n_ccds: int
    n_failed: int
    latency_seconds: float | None
    within_budget: bool


class VisitTracker:
    """Fed with nextVisit, per-CCD publications and failures; says when a visit completes."""

    def __init__(self, budget_seconds: float, keep: int = 1000) -> None:
        self.budget = budget_seconds
        self._keep = keep
        self._visits: dict[int, _Visit] = {}

    def _visit(self, visit: int) -> _Visit:
        v = self._visits.get(visit)
        if v is None:
            v = self._visits[visit] = _Visit(set())
            while len(self._visits) > self._keep:
                self._visits.pop(next(iter(self._visits)))
        return v

    def expect(self, visit: int, detectors: list[int]) -> None:
        self._visit(visit).detectors.update(int(d) for d in detectors)

    def published(
        self, visit: int, detector: int, n_alerts: int, latency: float
    ) -> VisitLatency | None:
        v = self._visit(visit)
        v.published[detector] = latency
        v.alerts += n_alerts
        return self._complete(visit, v)

    def failed(self, visit: int, detector: int) -> VisitLatency | None:
        v = self._visit(visit)
        v.failed.add(detector)
        return self._complete(visit, v)

    def _complete(self, visit: int, v: _Visit) -> VisitLatency | None:
        done = set(v.published) | v.failed
        if v.reported or not v.detectors or not v.detectors <= done:
            return None
        v.reported = True
        latency = max(v.published.values()) if v.published else None
        return VisitLatency(
            visit=visit,
            n_alerts=v.alerts,
            n_ccds=len(v.detectors),
            n_failed=len(v.failed),
            latency_seconds=latency,
            within_budget=latency is not None and latency <= self.budget and not v.failed,
        )
