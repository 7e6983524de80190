"""Alarms with the semantics of Rubin's Watcher (``lsst.ts.watcher.Alarm``).

* ``severity`` is the current condition; ``max_severity`` the highest seen since the alarm was
  last acknowledged (latched).
* Acknowledging needs a severity at least ``max_severity`` (so that an operator cannot
  acknowledge by accident a level that rose while they were clicking); it latches that level:
  the alarm unacknowledges itself only if the severity later goes above it.
* An acknowledged alarm whose condition clears is reset to nominal. An unacknowledged one whose
  condition clears is *stale*: still shown, at its latched severity, until acknowledged.
* Muting hides an alarm up to a severity for a duration; it does not change the latch.

Plain Python with an explicit clock (``now``, TAI seconds) so the rules are unit-testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from state.clock import tai_now
from state.errors import InvalidInputError

#: Longest mute: a week (a longer silence is a configuration change, not a mute).
MAX_MUTE_SECONDS = 7 * 86400.0


class Severity(IntEnum):
    """Numbered as ts_idl's ``Watcher.AlarmSeverity``."""

    NONE = 1
    WARNING = 2
    SERIOUS = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, value: Any) -> Severity:
        """A severity from its name or number; InvalidInputError otherwise."""
        try:
            if isinstance(value, str) and not value.isdigit():
                return cls[value.upper()[:16]]
            if isinstance(value, bool) or not isinstance(value, int | str) or len(str(value)) > 2:
                raise ValueError("not a severity number")
            return cls(int(value))
        except (KeyError, ValueError, TypeError) as e:
            names = ", ".join(s.name for s in cls)
            shown = repr(value)[:40]
            raise InvalidInputError(f"unknown severity {shown}; expected one of {names}") from e


class AlarmError(InvalidInputError):
    """An acknowledge or mute request that the alarm's state does not allow."""


@dataclass(slots=True)
class Alarm:
    name: str
    component: str
    severity: Severity = Severity.NONE
    max_severity: Severity = Severity.NONE
    reason: str = ""
    acknowledged: bool = False
    acknowledged_by: str = ""
    muted_severity: Severity = Severity.NONE
    muted_by: str = ""
    timestamp_unmute: float = 0.0
    timestamp_severity_oldest: float = 0.0
    timestamp_severity_newest: float = 0.0
    timestamp_max_severity: float = 0.0
    timestamp_acknowledged: float = 0.0

    @property
    def nominal(self) -> bool:
        return self.severity == Severity.NONE and self.max_severity == Severity.NONE

    @property
    def stale(self) -> bool:
        """The condition has cleared but nobody has acknowledged it."""
        return self.severity == Severity.NONE and self.max_severity > Severity.NONE

    @property
    def muted(self) -> bool:
        return self.muted_severity > Severity.NONE

    def set_severity(self, severity: Severity, reason: str, now: float | None = None) -> bool:
        """Report the current condition; True when anything visible changed."""
        now = tai_now() if now is None else now
        if severity == Severity.NONE and self.nominal:
            return False
        before = self._fingerprint()
        if self.severity != severity:
            self.timestamp_severity_oldest = now
            self.severity = severity
        if severity != Severity.NONE:
            self.reason = reason
        self.timestamp_severity_newest = now
        if severity == Severity.NONE:
            if self.acknowledged:
                self._reset_latch(now)
        elif severity > self.max_severity:
            if self.acknowledged:
                self.acknowledged, self.acknowledged_by = False, ""
                self.timestamp_acknowledged = now
            self.max_severity = severity
            self.timestamp_max_severity = now
        return self._fingerprint() != before

    def acknowledge(self, severity: Severity, user: str, now: float | None = None) -> bool:
        """Acknowledge at ``severity`` (≥ the latched one); True when the state changed."""
        now = tai_now() if now is None else now
        if severity < self.max_severity:
            raise AlarmError(
                f"cannot acknowledge {self.name} at {severity.name}: "
                f"its latched severity is {self.max_severity.name}"
            )
        if self.nominal or self.acknowledged:
            return False
        if self.severity == Severity.NONE:
            self.max_severity = Severity.NONE
            self.reason = ""
        else:
            self.max_severity = severity
        self.acknowledged, self.acknowledged_by = True, user
        self.timestamp_acknowledged = now
        self.timestamp_max_severity = now
        if self.nominal:
            self.acknowledged = False
        return True

    def mute(
        self, duration: float, severity: Severity, user: str, now: float | None = None
    ) -> None:
        """Hide the alarm up to ``severity`` for ``duration`` seconds (the last call wins)."""
        now = tai_now() if now is None else now
        if not 0 < duration <= MAX_MUTE_SECONDS:
            raise AlarmError(
                f"mute duration must be in (0, {MAX_MUTE_SECONDS:g}] seconds, got {duration:g}"
            )
        if severity == Severity.NONE:
            raise AlarmError("mute severity must be above NONE")
        self.muted_severity, self.muted_by = severity, user
        self.timestamp_unmute = now + duration

    def unmute(self) -> bool:
        if not self.muted:
            return False
        self.muted_severity, self.muted_by, self.timestamp_unmute = Severity.NONE, "", 0.0
        return True

    def expire_mute(self, now: float) -> bool:
        """Unmute when the mute's time is up; True when it was."""
        return self.muted and now >= self.timestamp_unmute and self.unmute()

    def hidden(self) -> bool:
        """Muted at or above both its current and latched severity: not for the operator now."""
        return self.muted and max(self.severity, self.max_severity) <= self.muted_severity

    def _reset_latch(self, now: float) -> None:
        self.reason = ""
        self.acknowledged, self.acknowledged_by = False, ""
        self.max_severity = Severity.NONE
        self.timestamp_acknowledged = now
        self.timestamp_max_severity = now

    def _fingerprint(self) -> tuple[Any, ...]:
        return (self.severity, self.max_severity, self.reason, self.acknowledged)

    def to_json(self) -> dict[str, Any]:
        """The Watcher ``alarm`` event's fields, plus the display flags."""
        return {
            "name": self.name,
            "component": self.component,
            "severity": self.severity.name,
            "maxSeverity": self.max_severity.name,
            "reason": self.reason,
            "acknowledged": self.acknowledged,
            "acknowledgedBy": self.acknowledged_by,
            "mutedSeverity": self.muted_severity.name,
            "mutedBy": self.muted_by,
            "timestampUnmute": self.timestamp_unmute,
            "timestampSeverityOldest": self.timestamp_severity_oldest,
            "timestampSeverityNewest": self.timestamp_severity_newest,
            "timestampMaxSeverity": self.timestamp_max_severity,
            "timestampAcknowledged": self.timestamp_acknowledged,
            "nominal": self.nominal,
            "stale": self.stale,
            "muted": self.muted,
            "hidden": self.hidden(),
        }


class AlarmBook:
    """Every alarm by name, with the counts the page shows."""

    def __init__(self) -> None:
        self.alarms: dict[str, Alarm] = {}

    def alarm(self, name: str, component: str) -> Alarm:
        found = self.alarms.get(name)
        if found is None:
            found = self.alarms[name] = Alarm(name, component)
        return found

    def get(self, name: str) -> Alarm:
        try:
            return self.alarms[name]
        except KeyError as e:
            raise AlarmError(f"no alarm named {name!r}") from e

    def counts(self) -> dict[str, int]:
        shown = [a for a in self.alarms.values() if not a.nominal]
        return {
            "active": sum(1 for a in shown if a.severity > Severity.NONE and not a.acknowledged),
            "acknowledged": sum(1 for a in shown if a.acknowledged),
            "stale": sum(1 for a in shown if a.stale),
            "muted": sum(1 for a in self.alarms.values() if a.muted),
        }

    def to_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in sorted(self.alarms.values(), key=lambda a: a.name)]
