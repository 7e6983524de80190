"""Events and telemetry as they travel on the bus and the wire."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["event", "telemetry"]

#: Events every component may publish in any state (the safe-state allowance).
GENERIC_EVENTS: frozenset[str] = frozenset(
    {
        "heartbeat",
        "summaryState",
        "errorCode",
        "logMessage",
        "logLevel",
        "softwareVersions",
        "configurationApplied",
        "configurationsAvailable",
    }
)

#: Topics the OCS sends into dmcs through the gateway.
OCS_TELEMETRY: frozenset[str] = frozenset(
    {"pointing", "rotator", "dome", "weather", "seeing", "filter", "predictedSchedule"}
)
CAMERA_EVENTS: frozenset[str] = frozenset(
    {"nextVisit", "startIntegration", "endIntegration", "endReadout"}
)
OCS_SOURCES: frozenset[str] = frozenset({"OCS", "Camera"})
#: Telemetry of batch reprocessing runs (docs/events.md), sent through the gateway by
#: ``dmcs reprocess`` and published as the source :data:`REPROCESS_SOURCE`.
REPROCESS_TELEMETRY: frozenset[str] = frozenset({"reprocessProgress", "reprocessFailure"})
REPROCESS_SOURCE = "Reprocess"
#: The source of the replay's node-loss events (``dmcs replay --kill-node-at``).
CLUSTER_SOURCE = "Cluster"
#: The source of the dashboard's own events (alarms, the status board), as ts_watcher's.
WATCHER_SOURCE = "Watcher"
#: Every source of events that is not a configured component.
EXTERNAL_SOURCES: frozenset[str] = OCS_SOURCES | {REPROCESS_SOURCE, CLUSTER_SOURCE, WATCHER_SOURCE}

#: The stages of one CCD in prompt processing, in pipeline order (docs/events.md).
PROMPT_STAGES: tuple[str, ...] = (
    "endReadout",
    "inBuffer",
    "ingested",
    "preloadReady",
    "isrDone",
    "differenceDone",
    "diaSourcesMeasured",
    "associated",
    "apdbStored",
    "alertsPublished",
)


@dataclass(frozen=True, slots=True)
class Event:
    component: str
    topic: str
    seq: int
    tai: float
    data: dict[str, Any] = field(default_factory=dict)
    kind: EventKind = "event"

    def to_wire(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "topic": self.topic,
            "seq": self.seq,
            "tai": self.tai,
            "kind": self.kind,
            "data": self.data,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Event:
        kind = wire.get("kind", "event")
        return cls(
            component=str(wire["component"]),
            topic=str(wire["topic"]),
            seq=int(wire["seq"]),
            tai=float(wire["tai"]),
            data=dict(wire.get("data") or {}),
            kind="telemetry" if kind == "telemetry" else "event",
        )
