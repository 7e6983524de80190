"""Waiting for an event with a timeout, without losing a cancellation.

On Python 3.11 ``asyncio.wait_for(event.wait(), t)`` can swallow a cancellation that arrives as
the event is set or the timeout expires (gone in 3.12, where ``wait_for`` is built on
``asyncio.timeout``): a background loop then keeps running and the ``close()``
that cancelled it waits for ever. ``asyncio.timeout`` does not lose it.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set (True) or ``seconds`` pass (False; None: no limit)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
