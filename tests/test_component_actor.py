"""A restarted component whose bus is restarting too waits for it (no Ray needed)."""

from __future__ import annotations

import pytest
from ray.exceptions import RayError

from actors.component_actor import count_restart


async def test_restart_count_waits_for_a_bus_that_is_restarting_too() -> None:
    calls = 0

    async def note() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RayError("the actor is restarting")
        return 2

    assert await count_restart(note, "Ingest", wait=5.0) == 2
    assert calls == 3


async def test_restart_count_gives_up_after_its_wait_and_passes_other_errors_on() -> None:
    async def away() -> int:
        raise RayError("the actor is restarting")

    with pytest.raises(RayError):
        await count_restart(away, "Ingest", wait=0.3)

    async def broken() -> int:
        raise ValueError("not the bus's absence")

    with pytest.raises(ValueError):
        await count_restart(broken, "Ingest", wait=5.0)
