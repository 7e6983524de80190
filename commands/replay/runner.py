"""One night through a running system: enable, drive, watch until every CCD has ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from commands.client import Client
from commands.night_driver import DriveProgress, DriveSummary, NightDriver
from commands.replay.watch import NightProgress, NightWatcher
from state.states import State
from summit.night_files import NightSource

#: Seconds after the last endReadout that the night may still take to finish processing.
DEFAULT_DRAIN_SECONDS = 300.0


@dataclass
class ReplayOutcome:
    drive: DriveSummary
    progress: NightProgress
    complete: bool
    wall_seconds: float
    visits: list[int]


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
) -> ReplayOutcome:
    """Drive the night through ``client`` and wait until every CCD is processed or failed.

    ``during`` is started (as a task) once the night is under way; tests inject faults there.
    """
    driver = NightDriver(
        client, night_dir, staging, speed=speed, visits=visits, on_progress=on_drive
    )
    detectors = [d.id for d in driver.source.camera.detectors]
    watcher = NightWatcher(client, on_change=on_change)
    for v in driver.source.visits:
        watcher.expect(v.visit_id, detectors)
    began = time.monotonic()
    events = await watcher.subscribe()
    async with asyncio.TaskGroup() as tg:
        watching = tg.create_task(watcher.run(events))
        if enable:
            await client.set_system_state(State.ENABLED)
        extra = tg.create_task(_maybe(during, watcher))
        drive = await driver.run()
        complete = await watcher.wait_complete(drain_seconds)
        await extra
        watching.cancel()
    return ReplayOutcome(
        drive=drive,
        progress=watcher.progress,
        complete=complete,
        wall_seconds=time.monotonic() - began,
        visits=[v.visit_id for v in driver.source.visits],
    )


async def _maybe(during: Callable[[NightWatcher], object] | None, watcher: NightWatcher) -> None:
    if during is not None:
        result = during(watcher)
        if asyncio.iscoroutine(result):
            await result
