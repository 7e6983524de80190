"""SIGTERM once Ray has started: Ray's start-up installs a handler of its own for it, which
prints a stack and kills the process (no component stopped, no summary written)."""

from __future__ import annotations

import asyncio
import signal


def sigterm_cancels(task: asyncio.Task[object] | None) -> None:
    """From now on SIGTERM cancels ``task`` (the command's main task), as Ctrl-C does; call
    it on the loop's thread, after Ray has started."""
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
