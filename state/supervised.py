"""A component's supervised background tasks: one that fails reports, and can be started again.

The controller owns the TaskGroup (:mod:`state.controller`); components start their loops
through this view of it from ``run_background``.
"""

from __future__ import annotations

import asyncio
import traceback as tb
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

FailureHandler = Callable[[str, BaseException, str], Awaitable[None]]


class SupervisedGroup:
    """A component's view of the controller's TaskGroup: a failing task reports, not kills.

    A task given as a factory (a callable returning the coroutine, e.g. ``self._loop``) can be
    started again: :meth:`restart_failed` does so for those that failed, which the controller
    calls on ``standby`` → ``start``, so a component recovered from FAULT has its loops back.
    """

    def __init__(self, tg: asyncio.TaskGroup, on_failure: FailureHandler) -> None:
        self._tg = tg
        self._on_failure = on_failure
        self._factories: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {}
        self._failed: set[str] = set()

    def create_task(
        self,
        coro: Coroutine[Any, Any, Any] | Callable[[], Coroutine[Any, Any, Any]],
        name: str | None = None,
    ) -> asyncio.Task[None]:
        if callable(coro):
            factory = coro
            label = name or getattr(factory, "__qualname__", "task")
            self._factories[label] = factory
            coro = factory()
        else:
            label = name or getattr(coro, "__qualname__", "task")
        return self._tg.create_task(self._guard(coro, label), name=label)

    def restart_failed(self) -> list[str]:
        """Start again every failed task that was given as a factory; their names."""
        again = sorted(n for n in self._failed if n in self._factories)
        for name in again:
            self._failed.discard(name)
            self.create_task(self._factories[name], name)
        return again

    async def _guard(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        try:
            await coro
        except Exception as e:  # noqa: BLE001 -- any failure of a component's own task
            self._failed.add(name)
            await self._on_failure(name, e, tb.format_exc())
