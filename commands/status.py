"""What the gateway knows of every component, from the events it has seen."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from state.events import Event

#: A heartbeat older than this many declared intervals marks the component stale.
STALE_INTERVALS = 3.0


@dataclass(slots=True)
class ComponentStatus:
    name: str
    state: str = "UNKNOWN"
    commanded_state: str = "UNKNOWN"
    heartbeat_interval: float = 1.0
    last_heartbeat: float | None = None  # monotonic, on the gateway's clock
    last_heartbeat_seq: int = 0
    lost_heartbeats: int = 0
    error_code: int = 0
    error_report: str = ""
    version: str = ""
    configuration: str = ""
    restart_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def heartbeat_age(self, now: float) -> float | None:
        return None if self.last_heartbeat is None else now - self.last_heartbeat

    def stale(self, now: float) -> bool:
        age = self.heartbeat_age(now)
        return age is None or age > STALE_INTERVALS * self.heartbeat_interval

    def to_json(self, now: float) -> dict[str, Any]:
        age = self.heartbeat_age(now)
        return {
            "name": self.name,
            "summaryState": self.state,
            "commandedState": self.commanded_state,
            "heartbeatAge": None if age is None else round(age, 3),
            "heartbeatInterval": self.heartbeat_interval,
            "stale": self.stale(now),
            "lostHeartbeats": self.lost_heartbeats,
            "errorCode": self.error_code,
            "errorReport": self.error_report,
            "version": self.version,
            "configuration": self.configuration,
            "restartCount": self.restart_count,
        }


class StatusBoard:
    """Folds the event stream into one :class:`ComponentStatus` per component."""

    def __init__(self, components: list[str]) -> None:
        self.components = {name: ComponentStatus(name) for name in components}

    def update(self, event: Event) -> None:
        status = self.components.get(event.component)
        if status is None:
            return
        data = event.data
        match event.topic:
            case "heartbeat":
                # A sequence that goes backwards is a restarted component: a new baseline.
                if status.last_heartbeat_seq and event.seq > status.last_heartbeat_seq + 1:
                    status.lost_heartbeats += event.seq - status.last_heartbeat_seq - 1
                status.last_heartbeat_seq = event.seq
                status.last_heartbeat = time.monotonic()
                status.heartbeat_interval = float(data.get("heartbeatInterval", 1.0))
                status.state = str(data.get("state", status.state))
            case "summaryState":
                status.state = str(data.get("summaryState", status.state))
                status.commanded_state = str(data.get("commandedState", status.commanded_state))
                status.restart_count = int(data.get("restartCount", 0))
                if status.state != "FAULT":
                    status.error_code, status.error_report = 0, ""
            case "errorCode":
                status.error_code = int(data.get("errorCode", 0))
                status.error_report = str(data.get("errorReport", ""))
            case "softwareVersions":
                status.version = str(data.get("cscVersion", ""))
            case "configurationApplied":
                status.configuration = str(data.get("configurations", ""))

    def to_json(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [s.to_json(now) for s in self.components.values()]

    def all_alive(self) -> tuple[bool, list[str]]:
        now = time.monotonic()
        stale = [s.name for s in self.components.values() if s.stale(now)]
        return not stale, stale
