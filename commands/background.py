"""A task that runs as long as the web application serves: its pumps and tickers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def background(
    name: str, run: Callable[[web.Application], Coroutine[Any, Any, Any]]
) -> CleanupContext:
    """A ``cleanup_ctx`` entry that starts ``run(app)`` as a task and cancels it at shutdown."""

    async def owned(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(app), name=name)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return owned
