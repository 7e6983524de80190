"""Fire-and-forget publishing that keeps order and outlives a bus restart.

An async Ray actor may start concurrent calls out of order, so independent ``publish.remote``
calls from one sender can reach the event bus reordered. Queue locally, and let one task send
what has queued up, in order, one ``publish_many`` call at a time; batching keeps the rate up.

While the bus is unreachable (killed, restarting) the batch is kept and sent again with
backoff, so a camera's or the OCS's input reaches its components once the bus is back.

Periodic items (heartbeats, telemetry: ``put(item, urgent=False)``) wait up to ``hold``
seconds for the next send instead of starting one: a component's 1 Hz heartbeat and 1 Hz
status then cost one bus call a second between them, and none while its per-CCD events flow
(they go with those). The order of all items is kept. The
queue is bounded (``max_pending``): beyond it the oldest events are dropped, counted and
logged, so a bus that never returns cannot exhaust the sender's memory. A batch whose reply
was lost may arrive twice; events carry per-topic sequence numbers for that.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import RayError

log = logging.getLogger("dmcs.actors")

#: Events kept while the bus is unreachable (beyond: the oldest are dropped, counted).
MAX_PENDING = 10_000
#: Events sent in one ``publish_many`` call.
MAX_BATCH = 1_000
#: How long a periodic item may wait for a send: half the 1 s heartbeat interval, so that two
#: 1 Hz streams of any phase share one call (the dashboard's stale-heartbeat alarm waits 3 s).
HOLD_S = 0.5


class OrderedSender:
    def __init__(
        self,
        send_many: Callable[[list[Any]], Awaitable[Any]],
        name: str,
        *,
        max_pending: int = MAX_PENDING,
        retry_initial: float = 0.1,
        retry_max: float = 2.0,
        hold: float = HOLD_S,
    ) -> None:
        self._send_many = send_many
        self._name = name
        self._max_pending = max_pending
        self._retry = (retry_initial, retry_max)
        self._outbox: deque[Any] = deque()
        self._task: asyncio.Task[None] | None = None
        self._hold = hold
        self._held: asyncio.TimerHandle | None = None
        #: Events dropped because the queue was full while the bus was away.
        self.dropped = 0
        #: Sends that failed and were tried again.
        self.retries = 0

    @property
    def pending(self) -> int:
        return len(self._outbox)

    def put(self, item: Any, urgent: bool = True) -> None:
        """Queue ``item``; sent at once if ``urgent``, else within ``hold`` seconds."""
        self._outbox.append(item)
        self._trim()
        if self._task is not None and not self._task.done():
            return
        if urgent:
            self._send_now()
        elif self._held is None:
            self._held = asyncio.get_running_loop().call_later(self._hold, self._send_now)

    def _send_now(self) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if self._outbox and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush(), name=self._name)

    def _trim(self) -> None:
        over = len(self._outbox) - self._max_pending
        if over <= 0:
            return
        for _ in range(over):
            self._outbox.popleft()
        if self.dropped == 0 or (self.dropped + over) // 1000 > self.dropped // 1000:
            log.error(
                "%s: the bus has been unreachable too long; %d oldest events dropped so far",
                self._name,
                self.dropped + over,
            )
        self.dropped += over

    async def _flush(self) -> None:
        delay = self._retry[0]
        while self._outbox:
            n = min(len(self._outbox), MAX_BATCH)
            batch = [self._outbox.popleft() for _ in range(n)]
            try:
                await self._send_many(batch)
            except RayError as e:
                self._outbox.extendleft(reversed(batch))
                self._trim()
                if self.retries == 0 or delay >= self._retry[1]:
                    log.warning(
                        "%s: bus unreachable (%s); %d events kept, retrying in %.1f s",
                        self._name,
                        type(e).__name__,
                        len(self._outbox),
                        delay,
                    )
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry[1])
                continue
            delay = self._retry[0]

    async def close(self) -> None:
        """Send what is queued (best effort, 2 s), then stop."""
        self._send_now()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(2.0):  # not wait_for: see state.waiting
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                if self._outbox:
                    log.error("%s: closed with %d events unsent", self._name, len(self._outbox))
