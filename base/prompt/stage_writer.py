"""Stage times written as they happen, so a processor restart loses none of them.

A CCD processor hands each stage time to a :class:`StageWriter`; its loop writes what has
gathered every ``STAGE_FLUSH_S`` seconds, keeps the rows and retries while the records
database is away (bounded: beyond ``MAX_UNSAVED`` the oldest are dropped and counted), and
holds them until the processor has connected its records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from base.prompt_records import PromptRecords, StageTime
from state.errors import DmcsError, RetriableError

#: Seconds stage times gather before they are written together.
STAGE_FLUSH_S = 0.2
#: Stage times kept while the records database is away.
MAX_UNSAVED = 100_000


class StageWriter:
    def __init__(
        self, report: Callable[[int, str], None], log: logging.Logger, backoff: float
    ) -> None:
        self._report = report
        self._log = log
        self._backoff = backoff
        self._rows: list[StageTime] = []
        self._waiting = asyncio.Event()
        #: The processor's records, once connected (None: rows are held).
        self.records: PromptRecords | None = None
        self.dropped = 0

    def add(self, row: StageTime) -> None:
        self._rows.append(row)
        over = len(self._rows) - MAX_UNSAVED
        if over > 0:
            del self._rows[:over]
            self.dropped += over
        self._waiting.set()

    def connected(self, records: PromptRecords | None) -> None:
        self.records = records
        if records is not None and self._rows:
            self._waiting.set()

    async def run(self) -> None:
        delay = self._backoff
        while True:
            await self._waiting.wait()
            await asyncio.sleep(STAGE_FLUSH_S)
            self._waiting.clear()
            records = self.records
            if records is None:
                continue  # held until connected()
            rows, self._rows = self._rows, []
            try:
                await records.record_stages(rows)
            except RetriableError as e:
                self._rows[:0] = rows
                self._waiting.set()
                self._log.warning("stage times not written yet (%s); retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            except DmcsError as e:
                self._report(logging.ERROR, f"{len(rows)} stage times not recorded: {e}")
            delay = self._backoff
