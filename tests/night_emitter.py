"""Test-only component: publishes contract-shaped pipeline events (docs/events.md) on command.

It stands in for the CcdProcessor, SummitBuffer, Ingest and AlertPublisher while those are
built, so that the dashboard is tested through the real system: Ray actor, bus, gateway.
"""

from __future__ import annotations

from typing import Any

from state.controller import Controller


class NightEmitter(Controller):
    event_topics = (
        "ccdStage",
        "ccdProcessed",
        "alertsPublished",
        "visitLatency",
        "bufferStatus",
        "bufferAlarm",
        "imageInBuffer",
        "imageIngested",
        "ingestStatus",
    )

    async def do_emit(self, *, topic: str, data: dict[str, Any], kind: str = "event") -> dict:
        """Publish one event (only when ENABLED: the safe state holds for test components too)."""
        sent = self.publish(topic, data, "telemetry" if kind == "telemetry" else "event")
        return {"published": sent}

    async def do_emitMany(self, *, events: list[Any]) -> dict:
        """Publish ``[topic, data]`` pairs in order."""
        sent = sum(bool(self.publish(str(t), dict(d))) for t, d in events)
        return {"published": sent}

    async def do_fail(self, *, code: int = 1, report: str = "test fault") -> None:
        await self.fault(code, report)


class CloseRecorder(NightEmitter):
    """Leaves a file ``closed`` in its data folder when it is closed (not merely killed)."""

    async def close(self) -> None:
        await super().close()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "closed").write_text("closed\n")
