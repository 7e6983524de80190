"""Fire-and-forget publishing that keeps order: one batch in flight at a time.

An async Ray actor may start concurrent calls out of order, so independent ``publish.remote``
calls from one sender can reach the event bus reordered. Queue locally, and let one task send
what has queued up, in order, one ``publish_many`` call at a time; batching keeps the rate up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import RayError

log = logging.getLogger("dmcs.actors")


class OrderedSender:
    def __init__(self, send_many: Callable[[list[Any]], Awaitable[Any]], name: str) -> None:
        self._send_many = send_many
        self._name = name
        self._outbox: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    def put(self, item: Any) -> None:
        self._outbox.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush(), name=self._name)

    async def _flush(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                await self._send_many(batch)
            except RayError as e:
                log.error(
                    "%s: %d events lost, the bus is unreachable: %s", self._name, len(batch), e
                )

    async def close(self) -> None:
        """Send what is queued (best effort), then stop."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            except TimeoutError:
                task.cancel()
