"""Start-up warm-up of a component: waited for within the ``start`` command's timeout.

The numba kernels of a component compile on their first call (or load from numba's on-disk
cache); done inside the first visit, that made the first visit of a night several times slower
than the next ones. Each component runs a small real input through its kernels when it
starts. ``start`` waits for that, but never past its own timeout: a cold cache on a busy
machine goes on compiling after start has returned, and the first visit's work waits for it
(numba's compiler lock, or the CCD worker running one job at a time).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from state.controller import Controller
from state.errors import DmcsError, StartupError

#: Seconds of the start command's timeout left when start stops waiting for the warm-up.
START_MARGIN = 2.0


async def wait_for_warm_up(
    component: Controller, task: asyncio.Future[Any], what: str, wait: float
) -> None:
    """Wait for ``task`` up to ``wait`` s within the running command's timeout; say so if it
    goes on past that. A warm-up that fails fails the start (StartupError)."""
    wait = max(0.0, min(wait, component.command_time_left() - START_MARGIN))
    try:
        async with asyncio.timeout(wait):
            await asyncio.shield(task)
    except TimeoutError:
        component.log_message(
            logging.WARNING,
            f"{what} warm-up still running after {wait:.0f} s (numba compiling a cold cache,"
            " or a busy machine); it finishes before the first visit's work",
        )
    except DmcsError as e:
        raise StartupError(f"{what} failed its warm-up: {e}") from e


def needs_warm_up(task: asyncio.Future[Any] | None) -> bool:
    """True when there is no warm-up yet, or the last one failed (start tries again)."""
    if task is None:
        return True
    return task.done() and (task.cancelled() or task.exception() is not None)


def log_failure(component: Controller, what: str) -> Any:
    """A done-callback that logs a warm-up which failed after start stopped waiting."""

    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            component.log.warning("%s warm-up failed: %s", what, task.exception())

    return done
