"""How the CCD processor records each CCD: its stage times as they happen, and how it ended.

A mixin of :class:`base.prompt.ccd_processor.CcdProcessor`: stage times go out as
``ccdStage`` events and to the durable records (:mod:`base.prompt.stage_writer`); an ending
(processed, failed, abandoned, deferred, or a retry) settles the work list and the claim,
is announced as ``ccdProcessed`` and recorded with its data quality, retried while the
records database is away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from base.prompt.outcomes import NO_HEADER, Outcome
from base.prompt.pool_member import RECORD_ATTEMPTS
from base.prompt.settings import CcdProcessorSettings
from base.prompt.stage_writer import StageWriter
from base.prompt.work_queue import WorkItem, WorkQueue
from base.prompt_records import CcdOutcome, PromptRecords, StageTime
from state.errors import DmcsError, InvalidInputError, RetriableError

#: Stages this component records itself (the rest come back from its peers).
OWN_STAGES = ("endReadout", "inBuffer", "ingested", "preloadReady", "isrDone",
              "differenceDone", "diaSourcesMeasured")  # fmt: skip


class CcdRecording:
    """Stage times and endings of CCDs; the processor provides the rest."""

    config: CcdProcessorSettings
    queue: WorkQueue
    counts: dict[str, int]
    log: logging.Logger
    stage_writer: StageWriter
    _records: PromptRecords | None
    _stages: dict[tuple[int, int], dict[str, float]]
    _headerless: set[tuple[int, int]]
    _headerless_visits: set[int]
    _q: Callable[..., Any]
    log_message: Callable[..., Any]
    publish: Callable[..., Any]
    _settle: Callable[[WorkItem], Awaitable[None]]

    def _stage(
        self, visit: int, detector: int, stage: str, tai: float, *, announce: bool = True
    ) -> None:
        """Record a stage time once; ``announce``: also as a ``ccdStage`` event, for the stages
        this processor reaches itself (the others' are on the bus already, as the Camera's
        ``endReadout``, SummitBuffer's ``imageInBuffer``, Ingest's ``imageIngested`` and
        Association's own ``ccdStage``: sent again they only cost the bus)."""
        stages = self._stages.setdefault((visit, detector), {})
        if stage not in stages:
            stages[stage] = tai
            if announce:
                self.publish(
                    "ccdStage",
                    {"visit": visit, "detector": detector, "stage": stage, "stageTai": tai},
                )
            try:
                self.stage_writer.add(StageTime(visit, detector, stage, tai))
            except InvalidInputError as e:
                self.log.warning("stage time not recorded: %s", e)

    async def _stages_of(self, visit: int, detector: int) -> dict[str, float]:
        """The CCD's stage times, those recorded before a restart of this processor included."""
        stages = dict(self._stages.get((visit, detector), {}))
        if "endReadout" in stages or self._records is None:
            return stages
        try:
            recorded = await self._records.ccd_stages(visit, detector)
        except DmcsError as e:
            self.log.warning("stage times of visit %s detector %s not read: %s", visit, detector, e)
            return stages
        return {**{k: v for k, v in recorded.items() if k in OWN_STAGES}, **stages}

    def _note_header(self, item: WorkItem, merged: bool) -> None:
        """Flag a CCD ingested without the header service's header, and say so once a visit."""
        key = (item.visit, item.detector)
        if merged:
            self._headerless.discard(key)
            return
        self._headerless.add(key)
        if item.visit not in self._headerless_visits:
            self._headerless_visits.add(item.visit)
            self.log_message(
                logging.WARNING,
                f"visit {item.visit}: raw(s) ingested without the header service's header "
                "(exposure metadata are the camera's own); flagged no_header",
                visit=item.visit,
            )

    async def _retry(self, item: WorkItem, outcome: Outcome) -> None:
        self.counts["retried"] += 1
        await self._q(self.queue.finish, item, "queued", outcome.reason)
        await self._record(item, outcome, final=False)
        await asyncio.sleep(self.config.retry_backoff)

    async def _finish(self, item: WorkItem, outcome: Outcome) -> None:
        if (item.visit, item.detector) in self._headerless:
            self._headerless.discard((item.visit, item.detector))
            outcome = dataclasses.replace(outcome, flags=(*outcome.flags, NO_HEADER))
        state = {"processed": "done"}.get(outcome.status, outcome.status)
        await self._q(self.queue.finish, item, state, outcome.reason)
        await self._settle(item)
        self.counts[outcome.status if outcome.status in self.counts else "failed"] += 1
        self.publish(
            "ccdProcessed",
            {
                "visit": item.visit,
                "detector": item.detector,
                "statusCode": 0 if outcome.status == "processed" else 1,
                "status": outcome.status,
                "reason": outcome.reason,
                "failureType": outcome.failure_type,
                "nDiaSources": outcome.n_dia_sources,
                "attempt": max(item.attempts, 1),
            },
        )
        await self._record(item, outcome)

    async def _record(self, item: WorkItem, outcome: Outcome, *, final: bool = True) -> None:
        """Stage times and this attempt's outcome; retried while the database is away."""
        if self._records is None:
            return
        key = (item.visit, item.detector)
        stages = self._stages.pop(key, {}) if final else dict(self._stages.get(key, {}))
        record = CcdOutcome(
            visit=item.visit,
            detector=item.detector,
            attempt=max(item.attempts, 1),
            status=outcome.status,
            failure_type=outcome.failure_type,
            reason=outcome.reason,
            recovery=outcome.recovery,
            n_dia_sources=outcome.n_dia_sources,
            flags=outcome.flags,
            **outcome.metrics,
        )
        rows = [StageTime(item.visit, item.detector, s, t) for s, t in stages.items()]
        for attempt in range(RECORD_ATTEMPTS):
            try:
                await self._records.record_stages(rows)
                await self._records.record_outcome(record)
                return
            except RetriableError as e:
                if attempt == RECORD_ATTEMPTS - 1:
                    self.log_message(logging.ERROR, f"visit {item.visit} not recorded: {e}")
                await asyncio.sleep(self.config.retry_backoff * 2**attempt)
            except DmcsError as e:
                self.log_message(logging.ERROR, f"visit {item.visit} not recorded: {e}")
                return
