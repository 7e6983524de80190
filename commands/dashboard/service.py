"""The dashboard's server side: a Watcher folded from the gateway's event stream.

It sees every event the gateway pumps from the bus (in the same order the WebSocket clients
get them), keeps the alarms, the night, the schedule and the batch reprocessing runs, and
publishes what it derives back onto the bus as the ``Watcher`` source: ``alarm`` (one alarm's
state, on every change) and ``componentStatus`` (the status board with heartbeat ages, once a
second). Pages start from :meth:`Dashboard.snapshot` and then follow the live events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from commands.dashboard.alarms import AlarmBook, Severity
from commands.dashboard.batch import BatchLimits, BatchRuns
from commands.dashboard.night import Limits, Night
from commands.dashboard.rules import Rules, Thresholds, Verdict
from commands.dashboard.schedule import Schedule, iso_tai, iso_utc
from commands.status import StatusBoard
from state.clock import tai_now
from state.errors import InvalidInputError, NotPermittedError
from state.events import REPROCESS_SOURCE, WATCHER_SOURCE, Event, EventKind

log = logging.getLogger("dmcs.dashboard")

SOURCE = WATCHER_SOURCE
#: What a page subscribes to: what it shows. Heartbeats stay out (``componentStatus`` carries
#: their ages once a second), which spares every page one frame per component per second.
PAGE_TOPICS: tuple[str, ...] = (
    "alarm",
    "componentStatus",
    "summaryState",
    "errorCode",
    "softwareVersions",
    "configurationApplied",
    "logMessage",
    "nextVisit",
    "predictedSchedule",
    "endReadout",
    "imageInBuffer",
    "imageIngested",
    "ccdStage",
    "ccdProcessed",
    "alertsPublished",
    "visitLatency",
    "bufferStatus",
    "ingestStatus",
    "reprocessProgress",
    "reprocessFailure",
)
Publish = Callable[[str, str, dict[str, Any], EventKind], Event]


class Dashboard:
    def __init__(
        self,
        board: StatusBoard,
        publish: Publish,
        authorized: Mapping[str, frozenset[str]],
        simulation: Mapping[str, bool] | None = None,
        thresholds: Thresholds | None = None,
        limits: Limits | None = None,
        batch: BatchLimits | None = None,
    ) -> None:
        self.board = board
        self._publish = publish
        self.authorized = dict(authorized)
        self.simulation = dict(simulation or {})
        self.rules = Rules(thresholds or Thresholds())
        self.alarms = AlarmBook()
        self.night = Night(limits)
        self.schedule = Schedule()
        self.batch = BatchRuns(batch)
        self.seqs: dict[str, int] = {}
        self._numbered_from_one: set[str] = set()
        self.malformed = 0

    # ----------------------------------------------------------------- input
    def observe(self, event: Event) -> None:
        """Fold one event in; a malformed payload is counted and logged, never raised."""
        if event.component == SOURCE:
            return
        key = f"{event.component}/{event.topic}"
        # The highest folded in (the bus may reorder a publisher's events); a second seq 1 is a
        # restarted publisher numbering afresh, a first one merely a late event.
        restarted = event.seq == 1 and key in self._numbered_from_one
        if event.seq > self.seqs.get(key, 0) or restarted:
            self.seqs[key] = event.seq
        if event.seq == 1:
            self._numbered_from_one.add(key)
        try:
            if event.component == REPROCESS_SOURCE:
                self.batch.observe(event)
                return
            self.night.observe(event)
            self.schedule.observe(event)
            verdicts = self.rules.observe(event)
            if event.topic in ("summaryState", "errorCode"):
                ticked = self.rules.tick(self.board)
                verdicts += [v for v in ticked if v.component == event.component]
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, InvalidInputError) as e:
            self.malformed += 1
            log.warning(
                "malformed %s/%s event ignored by the dashboard: %s: %s",
                event.component,
                event.topic,
                type(e).__name__,
                e,
            )
            return
        self._apply(verdicts, event.tai)

    def tick(self, now: float | None = None) -> None:
        """Once a second: heartbeat and FAULT rules, mute expiry, the board with its ages."""
        tai = tai_now() if now is None else now
        self._apply(self.rules.tick(self.board), tai)
        for alarm in self.alarms.alarms.values():
            if alarm.expire_mute(tai):
                self._emit_alarm(alarm.name)
        self._emit("componentStatus", {"components": self.components()})

    def _apply(self, verdicts: list[Verdict], tai: float) -> None:
        for v in verdicts:
            alarm = self.alarms.alarm(v.alarm, v.component)
            if alarm.set_severity(v.severity, v.reason, tai):
                self._emit_alarm(alarm.name)

    # --------------------------------------------------------------- actions
    def check(self, identity: str, component: str) -> None:
        if identity not in self.authorized.get(component, frozenset()):
            raise NotPermittedError(
                f"identity {identity or '(anonymous)'!r} may not act on {component}'s alarms"
            )

    def acknowledge(self, name: str, severity: Any, identity: str) -> dict[str, Any]:
        alarm = self.alarms.get(name)
        self.check(identity, alarm.component)
        alarm.acknowledge(Severity.parse(severity), identity)
        return self._emit_alarm(name)

    def mute(self, name: str, duration: float, severity: Any, identity: str) -> dict[str, Any]:
        alarm = self.alarms.get(name)
        self.check(identity, alarm.component)
        alarm.mute(duration, Severity.parse(severity), identity)
        return self._emit_alarm(name)

    def unmute(self, name: str, identity: str) -> dict[str, Any]:
        alarm = self.alarms.get(name)
        self.check(identity, alarm.component)
        alarm.unmute()
        return self._emit_alarm(name)

    # --------------------------------------------------------------- output
    def _emit(self, topic: str, data: dict[str, Any]) -> None:
        event = self._publish(SOURCE, topic, data, "event")
        self.seqs[f"{SOURCE}/{topic}"] = event.seq

    def _emit_alarm(self, name: str) -> dict[str, Any]:
        data = self.alarms.alarms[name].to_json()
        self._emit("alarm", {**data, "counts": self.alarms.counts()})
        return data

    def components(self) -> list[dict[str, Any]]:
        rows = self.board.to_json()
        for row in rows:
            row["simulationMode"] = self.simulation.get(row["name"], False)
            row["authorized"] = sorted(self.authorized.get(row["name"], ()))
        return rows

    def session(self, identity: str) -> dict[str, Any]:
        """Who the caller is and which components it may command."""
        return {
            "identity": identity,
            "commandable": sorted(c for c, ids in self.authorized.items() if identity in ids),
        }

    def snapshot(self) -> dict[str, Any]:
        now = tai_now()
        return {
            "tai": now,
            "taiIso": iso_tai(now),
            "utc": iso_utc(now),
            "seqs": dict(self.seqs),
            "components": self.components(),
            "alarms": self.alarms.to_json(),
            "alarmCounts": self.alarms.counts(),
            "night": self.night.to_json(),
            "schedule": self.schedule.to_json(now),
            "batch": self.batch.to_json(now),
            "malformedEvents": self.malformed,
        }

    async def run(self, interval: float = 1.0) -> None:
        """The once-a-second tick, owned by the gateway application."""
        while True:
            started = time.monotonic()
            self.tick()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
