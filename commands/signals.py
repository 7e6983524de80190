"""The commands' signal handling. Ray's start-up installs a SIGTERM handler of its own, which
prints a stack and kills the process (no component stopped, no summary written): a command
that runs Ray sets its own again once Ray has started."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` (a graceful stop: components to STANDBY, then exit)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def sigterm_cancels(task: asyncio.Task[object] | None) -> None:
    """From now on SIGTERM cancels ``task`` (the command's main task), as Ctrl-C does; call
    it on the loop's thread, after Ray has started."""
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
