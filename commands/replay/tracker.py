"""Completion of a night from events and the durable record, and never a silent wait.

The tracker looks at the durable record every ``poll`` seconds (when it has a reader) and
at the watcher's events as they come. When nothing has moved for ``stall_seconds`` it says
what it is still waiting for (which CCDs at which step, the camera, components not
ENABLED, an unreachable database), and says it again every ``stall_seconds`` until
something moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from commands.night_driver import DriveProgress
from commands.replay.record import Ccd, NightRecord
from commands.replay.watch import NightProgress, NightWatcher
from state.errors import DmcsError
from state.states import State

log = logging.getLogger("dmcs.replay")

#: Seconds without progress before the replay says what it is waiting for.
DEFAULT_STALL_SECONDS = 60.0
#: Seconds between two reads of the durable record.
DEFAULT_POLL_SECONDS = 2.0


def _ccds(keys: set[Ccd], limit: int = 6) -> str:
    shown = ", ".join(f"{v}/{d}" for v, d in sorted(keys)[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


class NightTracker:
    def __init__(
        self,
        watcher: NightWatcher,
        read_record: Callable[[], Awaitable[NightRecord]] | None = None,
        *,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        poll: float = DEFAULT_POLL_SECONDS,
        on_stall: Callable[[str], None] = log.warning,
    ) -> None:
        self.watcher = watcher
        self.record = NightRecord()
        self.record_error: str | None = None
        self.stalls: list[str] = []
        self.drive: DriveProgress | None = None
        self._read = read_record
        self._stall = stall_seconds
        self._poll = poll
        self._on_stall = on_stall

    @property
    def progress(self) -> NightProgress:
        return self.watcher.progress

    def ended(self) -> set[Ccd]:
        return self.progress.finished | self.record.ended

    def complete(self) -> bool:
        expected = self.progress.expected
        return bool(expected) and expected <= self.ended()

    def on_drive(self, progress: DriveProgress) -> None:
        self.drive = progress

    async def refresh(self) -> None:
        if self._read is None:
            return
        try:
            self.record = await self._read()
            self.record_error = None
        except DmcsError as e:
            self.record_error = str(e)

    def _signature(self) -> tuple[object, ...]:
        p, r = self.progress, self.record
        return (
            p.events_seen,
            len(r.ingested),
            len(r.processed),
            len(r.failed),
            len(r.published),
            self.drive.events_sent if self.drive else 0,
        )

    def waiting_for(self) -> str:
        """What the night still waits for, in one line."""
        p, r = self.progress, self.record
        left = p.expected - self.ended()
        ingested = p.ingested | r.ingested
        processed = p.processed | r.processed
        parts = []
        not_ingested = left - ingested
        if not_ingested:
            parts.append(f"{len(not_ingested)} CCDs to be ingested ({_ccds(not_ingested)})")
        unprocessed = (left & ingested) - processed
        if unprocessed:
            parts.append(f"{len(unprocessed)} CCDs to be processed ({_ccds(unprocessed)})")
        unpublished = left & processed
        if unpublished:
            parts.append(f"{len(unpublished)} CCDs' alerts ({_ccds(unpublished)})")
        if self.drive and self.drive.events_sent < self.drive.events_total:
            parts.append(
                f"the camera ({self.drive.events_sent}/{self.drive.events_total} events sent)"
            )
        down = sorted(
            f"{name} ({state})"
            for name, state in p.states.items()
            if state and state != State.ENABLED.name
        )
        if down:
            parts.append(f"components not ENABLED: {', '.join(down)}")
        if self.record_error:
            parts.append(f"the database ({self.record_error})")
        return "; ".join(parts) or "nothing (completion is being confirmed)"

    async def run(self) -> None:
        """Refresh the record and report stalls until cancelled."""
        last = self._signature()
        moved = said = time.monotonic()
        while True:
            await self.refresh()
            now = time.monotonic()
            signature = self._signature()
            if signature != last:
                last, moved = signature, now
            if now - moved >= self._stall and now - said >= self._stall:
                message = (
                    f"nothing has progressed for {now - moved:.0f} s; "
                    f"waiting for {self.waiting_for()}"
                )
                self.stalls.append(message)
                self._on_stall(message)
                said = now
            await asyncio.sleep(self._poll)

    async def wait_complete(self, timeout: float) -> bool:
        """True once every expected CCD has ended (by event or record) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.complete():
            left = deadline - time.monotonic()
            if left <= 0:
                await self.refresh()
                return self.complete()
            await self.watcher.wait_for(lambda p: p.complete, min(self._poll, left))
            await self.refresh()
        return True
