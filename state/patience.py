"""Calling again while a peer is away for a while: a restarting actor or database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def call_patiently(
    call: Callable[[], Awaitable[T]],
    away: type[BaseException] | tuple[type[BaseException], ...],
    *,
    patience: float,
    on_retry: Callable[[BaseException], None],
    delay: float = 1.0,
    max_delay: float = 1.0,
) -> T:
    """``call()``, tried again while it raises ``away`` for up to ``patience`` seconds.

    The waits between tries start at ``delay`` and double up to ``max_delay``; the last one
    ends at the deadline, after which the error of the last try is raised. Other errors pass.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            return await call()
        except away as e:
            left = deadline - loop.time()
            if left <= 0:
                raise
            on_retry(e)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, max_delay)
