"""One night through a running system: enable, drive, watch until every CCD has ended."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from commands.client import Client
from commands.night_driver import DriveProgress, DriveSummary, NightDriver
from commands.replay.record import NightRecord
from commands.replay.tracker import DEFAULT_STALL_SECONDS, NightTracker
from commands.replay.watch import NightProgress, NightWatcher
from state.states import State
from summit.night_files import NightSource

log = logging.getLogger("dmcs.replay")

#: Seconds after the last endReadout that the night may still take to finish processing.
DEFAULT_DRAIN_SECONDS = 300.0


@dataclass
class ReplayOutcome:
    drive: DriveSummary
    progress: NightProgress
    complete: bool
    wall_seconds: float
    visits: list[int]
    #: The durable record at the end (empty when the replay had no database reader).
    record: NightRecord = field(default_factory=NightRecord)
    #: What the replay said it was waiting for, each time nothing progressed.
    stalls: list[str] = field(default_factory=list)
    #: What an incomplete night was still waiting for at the end.
    waiting_for: str = ""
    #: Nodes removed mid-night (``--kill-node-at``) and what each cost (commands/replay/nodes.py).
    node_losses: list[dict[str, object]] = field(default_factory=list)
    #: Where each component ran at the start (component -> Ray node id), on a local cluster.
    placement: dict[str, str] = field(default_factory=dict)
    #: The role of each node of that cluster (node id -> ``summit`` or ``base``).
    node_roles: dict[str, str] = field(default_factory=dict)
    #: Seconds the system took to go to ENABLED (the components' start: warm-up included).
    enable_seconds: float | None = None


async def replay_night(
    client: Client,
    night_dir: Path | NightSource,
    staging: Path,
    *,
    speed: float = 1.0,
    visits: int | None = None,
    drain_seconds: float = DEFAULT_DRAIN_SECONDS,
    enable: bool = True,
    on_drive: Callable[[DriveProgress], None] | None = None,
    on_change: Callable[[NightProgress], None] = lambda _: None,
    during: Callable[[NightWatcher], object] | None = None,
    read_record: Callable[[list[int]], Awaitable[NightRecord]] | None = None,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
    on_stall: Callable[[str], None] = log.warning,
    enable_timeout: float = 60.0,
) -> ReplayOutcome:
    """Drive the night through ``client`` and wait until every CCD is processed or failed.

    ``during`` is started (as a task) once the night is under way; tests inject faults there.
    ``read_record`` reads the durable record: a CCD that it shows ended counts as ended even
    if this run saw no event for it (a resumed night). When nothing progresses for
    ``stall_seconds``, ``on_stall`` is told what the night is waiting for. ``enable_timeout``
    bounds each command that enables the components (their start includes their warm-up).
    """

    def drive_progress(p: DriveProgress) -> None:
        tracker.on_drive(p)
        if on_drive is not None:
            on_drive(p)

    driver = NightDriver(
        client, night_dir, staging, speed=speed, visits=visits, on_progress=drive_progress
    )
    detectors = [d.id for d in driver.source.camera.detectors]
    watcher = NightWatcher(client, on_change=on_change)
    visit_ids = [v.visit_id for v in driver.source.visits]
    reader = None if read_record is None else functools.partial(read_record, visit_ids)
    tracker = NightTracker(watcher, reader, stall_seconds=stall_seconds, on_stall=on_stall)
    for visit in visit_ids:
        watcher.expect(visit, detectors)
    began = time.monotonic()
    events = await watcher.subscribe()
    async with asyncio.TaskGroup() as tg:
        watching = tg.create_task(watcher.run(events))
        tracking = tg.create_task(tracker.run())
        enable_seconds = None
        if enable:
            enabling = time.monotonic()
            await client.set_system_state(State.ENABLED, timeout=enable_timeout)
            enable_seconds = time.monotonic() - enabling
        extra = tg.create_task(_maybe(during, watcher))
        drive = await driver.run()
        complete = await tracker.wait_complete(drain_seconds)
        await extra
        tracking.cancel()
        watching.cancel()
    return ReplayOutcome(
        drive=drive,
        progress=watcher.progress,
        complete=complete,
        wall_seconds=time.monotonic() - began,
        visits=visit_ids,
        record=tracker.record,
        stalls=tracker.stalls,
        waiting_for="" if complete else tracker.waiting_for(),
        enable_seconds=enable_seconds,
    )


async def _maybe(during: Callable[[NightWatcher], object] | None, watcher: NightWatcher) -> None:
    if during is not None:
        result = during(watcher)
        if asyncio.iscoroutine(result):
            await result
