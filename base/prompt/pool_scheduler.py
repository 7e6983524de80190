"""Which CCD a processor of the pool does next: fixed assignment, or by availability.

``fixed``: the oldest queued CCD of the processor's own detectors (``d % pool_size ==
index``), as its durable work list holds them; one slow CCD delays those behind it.

``availability``: every processor lists every ingested CCD, and the one that takes it holds a
claim in PostgreSQL (:mod:`base.prompt_records.claims`), so a CCD is processed by one processor
at a time. An idle processor takes, oldest visit first, its own detectors' CCDs at once (it
preloaded their inputs at ``nextVisit``) and another's once that one has left it unclaimed for
``claim_grace`` seconds: the fast path keeps the preload's locality, a busy or slow
processor's backlog goes to idle ones. The claims this processor took are renewed until it
settles them; the claims of a processor that died or stopped expire after ``claim_lease`` and
are taken over (the attempt counts). A processor restarted under the same name renews none of
its dead incarnation's claims: it takes them up again at once (or settles those its work list
says are done), so no CCD waits on a claim that nobody works on.

Either way the order of the pending CCDs, and which of them are deferred to the daytime
catch-up when the pool is behind, is the overload policy's (:mod:`base.prompt.overload`).

Errors of the work list (SQLite) pass through as ``StorageError`` (the processor faults);
errors of the claims database become ``NotReadyError`` (the processor waits and tries again).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from base.prompt.overload import plan
from base.prompt.settings import CcdProcessorSettings
from base.prompt.work_queue import ELSEWHERE, FINAL_STATES, WorkItem, WorkQueue
from base.prompt_records.claims import ClaimStore
from state.errors import DmcsError, NotReadyError

T = TypeVar("T")
#: Runs a work-list method on the work list's own thread: ``await run(fn, *args)``.
QueueRunner = Callable[..., Awaitable[Any]]


class PoolScheduler:
    def __init__(
        self,
        owner: str,
        queue: WorkQueue,
        run: QueueRunner,
        config: Callable[[], CcdProcessorSettings],
        passed: Callable[[int, int], None],
    ) -> None:
        """``run(fn, *args)`` calls a work-list method off the event loop (its fsync blocks);
        ``config`` reads the processor's current settings; ``passed(visit, detector)`` is
        told of each queued CCD found claimed by another processor."""
        self.owner = owner
        self.queue = queue
        self._run = run
        self._config = config
        self._passed = passed
        self.claims: ClaimStore | None = None
        #: The CCDs this incarnation claimed and has not settled: the only claims it renews.
        self.held: set[tuple[int, int]] = set()
        #: Started (and claimed) CCDs the overload policy defers: the processor ends them.
        self.deferred: list[tuple[WorkItem, str]] = []
        #: Recent seconds per CCD of this processor (for the projected backlog).
        self.ccd_seconds = 0.0
        #: Whether the last look found the backlog over the budget, and its seconds.
        self.behind = False
        self.backlog_s = 0.0

    @property
    def by_availability(self) -> bool:
        return self._config().scheduling == "availability"

    def owns(self, detector: int) -> bool:
        """Whether this processor preloads ``detector`` (and, fixed, is the only one to do it)."""
        c = self._config()
        return detector % c.pool_size == c.index

    def serves(self, detector: int) -> bool:
        """Whether this processor lists ``detector``'s ingested CCDs as work it may do."""
        return self.by_availability or self.owns(detector)

    async def _claims(self, call: Callable[[ClaimStore], Awaitable[T]]) -> T:
        if self.claims is None:
            raise NotReadyError(f"{self.owner} has no connection to the claims")
        try:
            return await call(self.claims)
        except DmcsError as e:
            raise NotReadyError(f"claims: {e}") from e

    async def next(self) -> tuple[WorkItem | None, float | None]:
        """The next CCD to process, started (and claimed); else None, with the seconds until a
        queued CCD of another processor may be taken (None: no such CCD waits).

        The order is the overload policy's (:mod:`base.prompt.overload`); the CCDs it defers
        are started (and claimed) too and left in :attr:`deferred` for the processor to end.
        """
        c = self._config()
        pending = await self._run(self.queue.pending)
        now = time.time()
        chosen = plan(
            [(item, listed) for item, _, listed in pending],
            now,
            c.overload,
            ccd_seconds=self.ccd_seconds,
            pool_size=c.pool_size,
        )
        self.behind, self.backlog_s = chosen.behind, chosen.backlog_s
        for item, reason in chosen.defer:
            started = await self._take(item, c.claim_lease)
            if started is not None:
                self.deferred.append((started, reason))
        if not self.by_availability:
            if not chosen.order:
                return None, None
            return await self._run(self.queue.start, chosen.order[0]), None
        queued_at = {(item.visit, item.detector): at for item, at, _ in pending}
        ripe_in: float | None = None
        candidates: list[WorkItem] = []
        for item in self._own_first(chosen.order):
            wait = queued_at[(item.visit, item.detector)] + c.claim_grace - now
            if self.owns(item.detector) or wait <= 0:
                candidates.append(item)
            else:
                ripe_in = wait if ripe_in is None else min(ripe_in, wait)
        others = [(i.visit, i.detector) for i in candidates if not self.owns(i.detector)]
        taken = await self._claims(lambda s: s.taken(others, self.owner)) if others else set()
        for item in candidates:
            if (item.visit, item.detector) in taken:
                await self._elsewhere(item)
                continue
            started = await self._take(item, c.claim_lease)
            if started is not None:
                return started, None
        return None, ripe_in

    def _own_first(self, order: list[WorkItem]) -> list[WorkItem]:
        """``order`` with, within each visit, this processor's own CCDs before the others'.

        The owner preloaded a CCD's inputs at ``nextVisit``; one taken by another processor is
        preloaded a second time (a ComCam template: ~0.09 core-s). In detector order, two busy
        processors each took the other's next CCD as soon as they were free (88 of 180 CCDs of
        the 20-visit ComCam replay); the visits keep their order, so no visit waits longer.
        """
        rank: dict[int, int] = {}
        for item in order:
            rank.setdefault(item.visit, len(rank))
        return sorted(order, key=lambda i: (rank[i.visit], not self.owns(i.detector)))

    async def _take(self, item: WorkItem, lease: float) -> WorkItem | None:
        """Start ``item`` here (claiming it, by availability); None when another holds it."""
        if not self.by_availability:
            return await self._run(self.queue.start, item)
        key = (item.visit, item.detector)
        attempt = await self._claims(lambda s: s.claim(*key, self.owner, lease))
        if attempt is None:
            await self._elsewhere(item)
            return None
        self.held.add(key)
        started = await self._run(self.queue.start, item)
        return dataclasses.replace(started, attempts=attempt)

    async def _elsewhere(self, item: WorkItem) -> None:
        await self._run(self.queue.finish, item, ELSEWHERE, "claimed by another processor")
        self._passed(item.visit, item.detector)

    def take_deferred(self) -> list[tuple[WorkItem, str]]:
        """The CCDs :meth:`next` started to defer, with their reasons (each handed out once)."""
        out, self.deferred = self.deferred, []
        return out

    async def holds(self, item: WorkItem) -> bool:
        """Whether this processor still holds ``item`` (renewing its lease); always, fixed."""
        if not self.by_availability:
            return True
        lease = self._config().claim_lease
        key = (item.visit, item.detector)
        held = await self._claims(lambda s: s.holds(*key, self.owner, lease))
        if not held:
            self.held.discard(key)
        return held

    async def settle(self, item: WorkItem) -> None:
        """The CCD is done (whatever its outcome): nobody takes it again."""
        if self.by_availability and self.claims is not None:  # none: it held no claim
            # Not renewed from now on, settled or not: an unsettled one is an orphan to settle.
            self.held.discard((item.visit, item.detector))
            await self._claims(lambda s: s.settle(item.visit, item.detector, self.owner))

    async def maintain(self) -> int:
        """Renew the claims this processor works on, and queue the CCDs whose claims expired
        and those its earlier incarnation left claimed; how many were queued."""
        if not self.by_availability:
            return 0
        lease = self._config().claim_lease
        mine = sorted(self.held)
        kept = await self._claims(lambda s: s.renew(self.owner, lease, mine))
        self.held -= set(mine) - kept  # taken over while this one's lease had lapsed
        expired = set(await self._claims(lambda s: s.expired()))
        orphans = set(await self._claims(lambda s: s.orphaned(self.owner, sorted(self.held))))
        orphans -= self.held  # claimed meanwhile by this incarnation's work loop
        queued = 0
        for v, d in sorted(expired | orphans):
            if (v, d) in orphans and await self._run(self.queue.state_of, v, d) in FINAL_STATES:
                await self._claims(lambda s, v=v, d=d: s.settle(v, d, self.owner))
            else:
                queued += await self._run(self.queue.requeue, v, d)
        return queued
