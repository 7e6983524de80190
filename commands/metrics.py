"""Prometheus metrics of one gateway (its own registry, so tests can run several)."""

from __future__ import annotations

import re
from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Distinct command label values kept per component (client-chosen names beyond: ``other``).
MAX_COMMAND_LABELS = 64
UNKNOWN, OTHER = "unknown", "other"
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._command_labels: dict[str, set[str]] = {}
        self.commands = Counter(
            "dmcs_commands",
            "Commands handled, by component, command and final ack code",
            ["component", "command", "code"],
            registry=self.registry,
        )
        self.command_seconds = Histogram(
            "dmcs_command_seconds",
            "Gateway-side time from receipt to final ack",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry,
        )
        self.events = Counter("dmcs_events", "Events received from the bus", registry=self.registry)
        self.bus_dropped = Gauge(
            "dmcs_bus_dropped", "Events the bus dropped for this gateway", registry=self.registry
        )
        self.client_dropped = Counter(
            "dmcs_client_dropped", "Events dropped for slow clients", registry=self.registry
        )
        self.encode_failures = Counter(
            "dmcs_event_encode_failures",
            "Event frames skipped because they could not be encoded for a client",
            registry=self.registry,
        )
        self.events_skipped = Counter(
            "dmcs_events_skipped",
            "Events from the bus skipped because handling them raised (logged)",
            registry=self.registry,
        )
        self.connections = Gauge(
            "dmcs_ws_connections", "Open WebSocket connections", registry=self.registry
        )
        self.bad_frames = Counter(
            "dmcs_bad_frames",
            "Frames refused with an error frame",
            ["code"],
            registry=self.registry,
        )
        self.component_up = Gauge(
            "dmcs_component_heartbeat_ok",
            "1 when the component's heartbeat is fresh",
            ["component"],
            registry=self.registry,
        )

    def command_labels(
        self, component: str, command: str, known: Collection[str]
    ) -> tuple[str, str]:
        """Bounded label values for a client-named command: a component the gateway does not
        serve is ``unknown``; command names are kept while they look like identifiers, up to
        :data:`MAX_COMMAND_LABELS` per component, and ``other`` beyond."""
        if component not in known:
            return UNKNOWN, UNKNOWN
        seen = self._command_labels.setdefault(component, set())
        if command in seen:
            return component, command
        if len(seen) < MAX_COMMAND_LABELS and _IDENTIFIER.fullmatch(command):
            seen.add(command)
            return component, command
        return component, OTHER

    def render(self) -> bytes:
        return generate_latest(self.registry)
