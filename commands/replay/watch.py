"""Watches a night from the outside, as the OCS would: completion, and restarted components.

It subscribes through the real client to the pipeline's contract events (docs/events.md),
counts each CCD once when it ends (processed or failed), and, acting for the OCS, brings a
component that came back from a crash (STANDBY with a higher restartCount) to ENABLED again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from commands.client import Client, EventStream
from state.errors import DmcsError
from state.events import Event
from state.states import State

log = logging.getLogger("dmcs.replay")

#: Seconds the watcher keeps trying to re-enable a restarted component.
REENABLE_SECONDS = 120.0

TOPICS = (
    "ccdProcessed",
    "alertsPublished",
    "visitLatency",
    "summaryState",
    "imageIngested",
    "imageRefused",
)


@dataclass
class NightProgress:
    expected: set[tuple[int, int]] = field(default_factory=set)
    ingested: set[tuple[int, int]] = field(default_factory=set)
    processed: set[tuple[int, int]] = field(default_factory=set)
    failed: dict[tuple[int, int], str] = field(default_factory=dict)
    alerts: int = 0
    alerts_by_ccd: dict[tuple[int, int], int] = field(default_factory=dict)
    duplicate_publications: int = 0
    latencies: dict[tuple[int, int], float] = field(default_factory=dict)
    visit_latencies: dict[int, float] = field(default_factory=dict)
    recoveries: list[str] = field(default_factory=list)
    #: The latest summaryState of each component seen, and how many events were seen.
    states: dict[str, str] = field(default_factory=dict)
    events_seen: int = 0

    @property
    def published(self) -> set[tuple[int, int]]:
        return set(self.alerts_by_ccd)

    @property
    def finished(self) -> set[tuple[int, int]]:
        """CCDs that failed, or were processed and had their alerts published (maybe none)."""
        return (self.processed & self.published) | set(self.failed)

    @property
    def complete(self) -> bool:
        return bool(self.expected) and self.expected <= self.finished


class NightWatcher:
    def __init__(
        self,
        client: Client,
        *,
        recover: bool = True,
        on_change: Callable[[NightProgress], None] = lambda _: None,
    ) -> None:
        self.client = client
        self.recover = recover
        self.progress = NightProgress()
        self._on_change = on_change
        self._changed = asyncio.Event()
        self._restarts: dict[str, int] = {}
        self.wanted_state = State.ENABLED

    def expect(self, visit: int, detectors: list[int]) -> None:
        self.progress.expected.update((visit, d) for d in detectors)

    async def subscribe(self) -> EventStream:
        """The watcher's confirmed subscription: open it before the night starts."""
        return await self.client.open_subscription(None, list(TOPICS), snapshot=False)

    async def run(self, events: EventStream) -> None:
        """Consume ``events`` (from :meth:`subscribe`) until cancelled; then close them."""
        try:
            async with asyncio.TaskGroup() as tg:
                async for event in events:
                    self._see(event, tg)
                    self._on_change(self.progress)
                    self._changed.set()
        finally:
            await events.aclose()

    def _see(self, event: Event, tg: asyncio.TaskGroup) -> None:
        d, p = event.data, self.progress
        p.events_seen += 1
        if event.topic == "summaryState":
            p.states[event.component] = str(d.get("summaryState", ""))
            self._maybe_recover(event, tg)
            return
        if "visit" not in d or "detector" not in d:
            return
        key = (int(d["visit"]), int(d["detector"]))
        if event.topic == "imageIngested" and int(d.get("statusCode", 0)) == 0:
            p.ingested.add(key)
        elif event.topic == "imageRefused":
            if key not in p.processed and key not in p.ingested:
                p.failed[key] = f"rawRefused: {d.get('reason')}"
        elif event.topic == "ccdProcessed":
            if int(d.get("statusCode", 1)) == 0:
                p.processed.add(key)
                p.failed.pop(key, None)
            elif key not in p.processed:
                p.failed[key] = f"{d.get('failureType')}: {d.get('reason')}"
        elif event.topic == "alertsPublished":
            if key in p.alerts_by_ccd:
                p.duplicate_publications += 1
            p.alerts_by_ccd[key] = int(d.get("nAlerts", 0))
            p.alerts += int(d.get("nAlerts", 0))
            latency = d.get("latencySeconds")  # null when the CCD's readout time is unknown
            if latency is not None:
                p.latencies[key] = float(latency)

    def _maybe_recover(self, event: Event, tg: asyncio.TaskGroup) -> None:
        restarts = int(event.data.get("restartCount", 0))
        name = event.component
        previous = self._restarts.get(name, 0)
        self._restarts[name] = max(previous, restarts)
        state = str(event.data.get("summaryState", ""))
        if self.recover and restarts > previous and state == State.STANDBY.name:
            self.progress.recoveries.append(f"{name} restarted (restart {restarts}); re-enabled")
            tg.create_task(self._reenable(name))

    async def _reenable(self, name: str) -> None:
        """Bring a restarted component back to the wanted state, retrying while it refuses
        (its database may be down too), for up to ``REENABLE_SECONDS``."""
        deadline = asyncio.get_running_loop().time() + REENABLE_SECONDS
        delay = 0.5
        while True:
            try:
                await self.client.set_state(name, self.wanted_state)
                log.warning("%s came back from a restart; re-enabled", name)
                return
            except DmcsError as e:
                if asyncio.get_running_loop().time() + delay > deadline:
                    log.error("could not re-enable %s after its restart: %s", name, e)
                    self.progress.recoveries.append(f"{name} could not be re-enabled: {e}")
                    return
                log.warning("re-enabling %s failed (%s); retrying in %.1f s", name, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def wait_for(self, predicate: Callable[[NightProgress], bool], timeout: float) -> bool:
        """True once ``predicate(progress)`` holds, False if ``timeout`` seconds pass first."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.progress):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_complete(self, timeout: float) -> bool:
        """True when every expected CCD ended within ``timeout`` seconds."""
        return await self.wait_for(lambda p: p.complete, timeout)
