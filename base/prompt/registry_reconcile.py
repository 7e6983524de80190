"""The CCD processor's look at the registry for what its events missed: raws ingested while
it was not listening (or whose ``imageIngested`` was lost), and visits whose ``nextVisit`` it
never heard.

A mixin of :class:`base.prompt.ccd_processor.CcdProcessor`, which provides the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from base.prompt.pool_scheduler import PoolScheduler
from base.prompt.settings import CcdProcessorSettings
from base.prompt.work_queue import WorkQueue
from base.registry.repository import Repository
from state.errors import DmcsError
from state.states import State

#: How far back each periodic registry look reaches before the previous one's newest raw.
RECONCILE_MARGIN = timedelta(seconds=60)


class RegistryReconciliation:
    """What the processor learns from the registry rather than from its events."""

    config: CcdProcessorSettings
    queue: WorkQueue
    scheduler: PoolScheduler
    counts: dict[str, int]
    summary_state: State
    _repository: Repository | None
    _wakeup: asyncio.Event
    _q: Callable[..., Awaitable[Any]]
    log_message: Callable[..., None]

    def _init_reconciliation(self) -> None:
        #: The newest ingest time the previous look at the registry saw (None: no look yet).
        self._reconciled_to: datetime | None = None
        self._started_at = datetime.now(UTC)

    async def _reconcile(self, *, full: bool = True) -> int:
        """Queue the raws of this processor's detectors that the registry holds and the work
        list does not (ingested while it was not listening, or whose ``imageIngested`` was
        lost). ``full``: every raw since the first visit heard of; else those ingested since
        the previous look (less a margin for transactions that committed late). A processor
        that has heard of no visit yet (its nextVisit events lost too) looks at the raws
        ingested since it started. A raw is left to its event for one ``reconcile_interval``
        (the next look takes it): Ingest registers it before it publishes ``imageIngested``,
        and a look in between took a raw whose event was merely on its way for a lost one."""
        if self._repository is None:
            return 0
        first = await self._q(self.queue.first_visit)
        since = self._reconciled_to
        if full or since is None:
            since = None
        else:
            since -= RECONCILE_MARGIN
        if first is None:
            first = 0
            if since is None or since < self._started_at - RECONCILE_MARGIN:
                since = self._started_at - RECONCILE_MARGIN
        try:
            raws, latest = await self._repository.raws_ingested_since(
                first, since, timedelta(seconds=self.config.reconcile_interval)
            )
        except DmcsError as e:
            self.log_message(logging.WARNING, f"could not look for missed raws: {e}")
            return 0
        if latest is not None and (self._reconciled_to is None or latest > self._reconciled_to):
            self._reconciled_to = latest
        missed = [
            r
            for r in raws
            if self.scheduler.serves(r.detector)
            and await self._q(self.queue.enqueue, r.visit, r.detector)
        ]
        if missed:
            self.counts["reconciled"] += len(missed)
            self.log_message(
                logging.WARNING,
                f"{len(missed)} CCD(s) in the registry without their imageIngested event"
                f" ({', '.join(f'{r.visit}/{r.detector}' for r in missed[:8])}); queued",
            )
            self._wakeup.set()
        return len(missed)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            if self.summary_state == State.ENABLED:
                await self._reconcile(full=False)

    async def _visit_info(self, visit: int) -> dict[str, Any] | None:
        """The visit as ``nextVisit`` described it, or as the registry has it (missed event)."""
        info = await self._q(self.queue.visit_info, visit)
        if info is not None or self._repository is None:
            return info
        exposure = await self._repository.get_exposure(visit)
        if exposure is None or exposure.band is None or exposure.mjd_start is None:
            return None
        info = {
            "visit": visit,
            "camera": exposure.camera,
            "dayObs": exposure.day_obs,
            "band": exposure.band,
            "ra": exposure.ra,
            "dec": exposure.dec,
            "fieldId": exposure.field_id,
            "startMjd": exposure.mjd_start,
            "exposureTime": exposure.exposure_time,
        }
        await self._q(self.queue.remember_visit, visit, info)
        return info
