"""The CCD processor's part in its pool: claims kept and settled, CCDs passed over to the
processor that holds them, and the CCDs the overload policy defers (with its alarm).

A mixin of :class:`base.prompt.ccd_processor.CcdProcessor`; the choices themselves are
:mod:`base.prompt.pool_scheduler`'s and :mod:`base.prompt.overload`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from base.prompt.outcomes import Outcome, failure
from base.prompt.overload import DEFERRED, OVERLOAD
from base.prompt.pool_scheduler import PoolScheduler
from base.prompt.settings import CcdProcessorSettings
from base.prompt.work_queue import ELSEWHERE, WorkItem, WorkQueue
from state.errors import NotReadyError
from state.states import State

#: Tries to settle a CCD's claim while the database is restarting.
RECORD_ATTEMPTS = 6


class PoolMember:
    """What a pooled processor does beside processing; the processor provides the rest."""

    config: CcdProcessorSettings
    queue: WorkQueue
    scheduler: PoolScheduler
    counts: dict[str, int]
    log: logging.Logger
    summary_state: State
    #: Whether the Overload alarm is raised (by a deferral, until within the budget again).
    _alarmed: bool
    _wakeup: asyncio.Event
    _stages: dict[tuple[int, int], dict[str, float]]
    _headerless: set[tuple[int, int]]
    _q: Callable[..., Any]
    log_message: Callable[..., Any]
    publish: Callable[..., Any]
    _finish: Callable[[WorkItem, Outcome], Awaitable[None]]

    async def _defer(self, deferred: list[tuple[WorkItem, str]]) -> None:
        """End the CCDs the overload policy defers (outcome ``deferred``, for the daytime
        catch-up), and raise or clear the Overload alarm as the pool falls behind or recovers."""
        for item, reason in deferred:
            outcome = failure(OVERLOAD, reason, status=DEFERRED, recovery="catch-up")
            await self._finish(item, outcome)
        if not deferred and (self.scheduler.behind or not self._alarmed):
            return  # raised by a deferral, cleared once within the budget again
        self._alarmed = bool(deferred)
        severity = "SERIOUS" if deferred else "NONE"
        total = self.counts[DEFERRED]
        why = (
            f"behind by {self.scheduler.backlog_s:.0f} s (budget"
            f" {self.config.overload.latency_budget:g} s): newest visits first;"
            f" {total} CCD(s) deferred to the daytime catch-up"
            if deferred
            else ""
        )
        self.publish(
            "overloadAlarm",
            {"severity": severity, "reason": why, "ccdsDeferred": total,
             "backlogSeconds": round(self.scheduler.backlog_s, 1)},
        )  # fmt: skip
        if deferred:
            self.log_message(logging.WARNING, f"{len(deferred)} CCD(s) deferred: {why}")

    def _passed(self, visit: int, detector: int) -> None:
        """Another processor of the pool holds the CCD: its stage times stay recorded."""
        self._stages.pop((visit, detector), None)
        self._headerless.discard((visit, detector))

    async def _claims_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.claim_lease / 3)
            if self.summary_state != State.ENABLED:
                continue
            try:
                taken_over = await self.scheduler.maintain()
            except NotReadyError as e:
                self.log.warning("claims not renewed: %s", e)
                continue
            if taken_over:
                self.log_message(
                    logging.WARNING,
                    f"{taken_over} CCD(s) whose processor's claim expired; queued here",
                )
                self._wakeup.set()

    async def _still_held(self, item: WorkItem) -> bool:
        """Whether this processor still holds the CCD's claim before its APDB write; one
        taken over (this processor's lease lapsed) is left to its new holder."""
        try:
            held = await self.scheduler.holds(item)
        except NotReadyError as e:
            self.log.warning("claim of %s/%s not checked: %s", item.visit, item.detector, e)
            return True  # Association stores a CCD once whoever sends it
        if not held:
            await self._q(self.queue.finish, item, ELSEWHERE, "claim taken over")
            self._passed(item.visit, item.detector)
            self.log_message(
                logging.WARNING,
                f"visit {item.visit} detector {item.detector}: claim taken over; left to it",
            )
        return held

    async def _settle(self, item: WorkItem) -> None:
        """Mark the CCD's claim done; retried while the database is away (else its lease
        lapses and another processor repeats it, which Association stores once)."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                await self.scheduler.settle(item)
                return
            except NotReadyError as e:
                if attempt == RECORD_ATTEMPTS - 1:
                    self.log_message(logging.ERROR, f"claim of {item.visit} not settled: {e}")
                    return
                await asyncio.sleep(self.config.retry_backoff * 2**attempt)
