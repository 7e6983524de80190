"""Where the per-CCD work runs: an ``Executor`` runs :func:`base.reprocess.work.process_ccd`.

``InlineExecutor`` runs it in a thread of this process (tests, one core); the Ray executor
(``actors/reprocess.py``) spreads it over a cluster. Either raises ``RetriableError`` for a
worker that died (the unit is retried) and returns ``ok: False`` for bad data (not retried).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from base.reprocess.work import CcdUnit, process_ccd


class Executor(Protocol):
    #: How many CCDs it runs at once.
    workers: int

    async def run(self, unit: CcdUnit, release: int) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class InlineExecutor:
    """Runs CCDs in threads of this process (``workers`` at a time)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    async def run(self, unit: CcdUnit, release: int) -> dict[str, Any]:
        return await asyncio.to_thread(process_ccd, unit, release)

    async def close(self) -> None:
        return None
