"""``state.waiting.wait_event``: set, timed out, and a cancellation that arrives as the event
is set still cancels (Python 3.11's ``asyncio.wait_for`` returns the result instead: 50 of 50
times in this test's loop; a component's close() then waited for ever on its background loop)."""

from __future__ import annotations

import asyncio

import pytest

from state.waiting import wait_event


async def test_set_and_timed_out() -> None:
    event = asyncio.Event()
    assert not await wait_event(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5.0)
    assert await wait_event(event, None)


async def test_a_cancellation_as_the_event_is_set_stops_the_loop() -> None:
    woke: list[int] = []

    async def loop(event: asyncio.Event) -> None:
        while True:
            await wait_event(event, 10.0)
            woke.append(1)
            event.clear()

    for _ in range(50):
        event = asyncio.Event()
        task = asyncio.create_task(loop(event))
        await asyncio.sleep(0)
        event.set()  # the wait completes in the same turn as the cancellation arrives
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2.0):
                await task
        assert task.cancelled() and not woke
