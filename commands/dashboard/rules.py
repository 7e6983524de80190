"""Alarm rules: from the event stream and the status board to (alarm, severity, reason).

Each rule names its alarm ``<Rule>.<component>`` as the Watcher does. Event-driven rules
answer :meth:`Rules.observe`; time-driven ones (a heartbeat that stopped) answer
:meth:`Rules.tick`, which the dashboard calls once a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from commands.dashboard.alarms import Severity
from commands.status import STALE_INTERVALS, StatusBoard
from state.events import Event

#: Alert latency budget (LSE-61 OTT1): alerts within 60 s of the end of readout.
LATENCY_BUDGET_S = 60.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Where each rule steps up a severity (WARNING, SERIOUS, CRITICAL)."""

    buffer_fill: tuple[float, float, float] = (0.70, 0.85, 0.95)
    ingest_lag_s: tuple[float, float, float] = (30.0, 60.0, 300.0)
    latency_s: tuple[float, float, float] = (45.0, LATENCY_BUDGET_S, 2 * LATENCY_BUDGET_S)
    #: Declared heartbeat intervals without a heartbeat before SERIOUS becomes CRITICAL.
    heartbeat_critical_intervals: float = 10.0


@dataclass(frozen=True, slots=True)
class Verdict:
    alarm: str
    component: str
    severity: Severity
    reason: str


def stepped(value: float, steps: tuple[float, float, float]) -> Severity:
    """NONE below the first step, then WARNING, SERIOUS, CRITICAL at or above each step."""
    severity = Severity.NONE
    levels = (Severity.WARNING, Severity.SERIOUS, Severity.CRITICAL)
    for threshold, level in zip(steps, levels, strict=True):
        if value >= threshold:
            severity = level
    return severity


@dataclass(slots=True)
class Rules:
    thresholds: Thresholds = Thresholds()
    started: float = field(default_factory=time.monotonic)
    _buffer_fill: dict[str, float] = field(default_factory=dict)
    _buffer_alarm: dict[str, tuple[Severity, str]] = field(default_factory=dict)
    _visit_latency: dict[str, tuple[int, float]] = field(default_factory=dict)

    def observe(self, event: Event) -> list[Verdict]:
        data = event.data
        match event.topic:
            case "bufferStatus" | "bufferAlarm":
                return [self._buffer(event)]
            case "ingestStatus" if "lagSeconds" in data:
                lag = float(data["lagSeconds"])
                severity = stepped(lag, self.thresholds.ingest_lag_s)
                reason = f"ingest lags the camera by {lag:.1f} s" if severity else ""
                return [Verdict(f"IngestLag.{event.component}", event.component, severity, reason)]
            case "visitLatency" | "alertsPublished" if data.get("latencySeconds") is not None:
                return [self._latency(event)]
            case "nodeLost":
                return [self._node_lost(event)]
            case "overloadAlarm":
                severity = Severity.parse(data.get("severity", "NONE"))
                reason = str(data.get("reason", "")) if severity else ""
                name = f"Overload.{event.component}"
                return [Verdict(name, event.component, severity, reason)]
        return []

    def _buffer(self, event: Event) -> Verdict:
        name = event.component
        data = event.data
        if event.topic == "bufferStatus" and "fillFraction" in data:
            self._buffer_fill[name] = float(data["fillFraction"])
        elif event.topic == "bufferAlarm":
            reported = Severity.parse(data.get("severity", "NONE"))
            self._buffer_alarm[name] = (reported, str(data.get("reason", "")))
        fill = self._buffer_fill.get(name, 0.0)
        by_fill = stepped(fill, self.thresholds.buffer_fill)
        reported, why = self._buffer_alarm.get(name, (Severity.NONE, ""))
        severity = max(by_fill, reported)
        reason = f"summit buffer {fill:.0%} full" if severity else ""
        if reported > Severity.NONE and why:
            reason += f"; {name} reports: {why}"
        return Verdict(f"BufferFill.{name}", name, severity, reason)

    @staticmethod
    def _node_lost(event: Event) -> Verdict:
        """A Ray node died: SERIOUS, latched until acknowledged (it does not come back)."""
        d = event.data
        node = str(d.get("nodeId", "?"))
        reason = (
            f"{d.get('role', '?')} node {node[:12]} lost at visit {d.get('visit', '?')}; "
            f"restarted elsewhere: {', '.join(map(str, d.get('actors') or [])) or 'none'}; "
            f"{d.get('ccdsInterrupted', 0)} CCDs under way"
        )
        return Verdict(f"NodeLoss.{node[:12]}", event.component, Severity.SERIOUS, reason)

    def _latency(self, event: Event) -> Verdict:
        """The latest visit's worst latency, from per-CCD and per-visit reports alike."""
        name = event.component
        visit = int(event.data.get("visit", -1))
        latency = float(event.data["latencySeconds"])
        last_visit, worst = self._visit_latency.get(name, (visit, 0.0))
        if visit < last_visit:
            latency = worst  # a late report of an older visit does not clear the newer one
            visit = last_visit
        elif visit == last_visit:
            latency = max(latency, worst)
        self._visit_latency[name] = (visit, latency)
        severity = stepped(latency, self.thresholds.latency_s)
        reason = (
            f"visit {visit}: alerts {latency:.1f} s after readout (budget {LATENCY_BUDGET_S:.0f} s)"
            if severity
            else ""
        )
        return Verdict(f"AlertLatency.{name}", name, severity, reason)

    def tick(self, board: StatusBoard, now: float | None = None) -> list[Verdict]:
        """Heartbeat and FAULT alarms for every component on the board."""
        now = time.monotonic() if now is None else now
        verdicts = []
        for status in board.components.values():
            interval = status.heartbeat_interval
            age = status.heartbeat_age(now)
            if age is None:
                age = now - self.started  # never heard from since the gateway started
            severity = Severity.NONE
            reason = ""
            if status.state != "OFFLINE" and age > STALE_INTERVALS * interval:
                critical = age > self.thresholds.heartbeat_critical_intervals * interval
                severity = Severity.CRITICAL if critical else Severity.SERIOUS
                reason = f"no heartbeat for {age:.1f} s (interval {interval:g} s)"
                if status.lost_heartbeats:
                    reason += f"; {status.lost_heartbeats} lost"
            verdicts.append(Verdict(f"Heartbeat.{status.name}", status.name, severity, reason))
            in_fault = status.state == "FAULT"
            verdicts.append(
                Verdict(
                    f"Fault.{status.name}",
                    status.name,
                    Severity.SERIOUS if in_fault else Severity.NONE,
                    f"FAULT {status.error_code}: {status.error_report}" if in_fault else "",
                )
            )
        return verdicts
