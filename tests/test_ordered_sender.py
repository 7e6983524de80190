"""OrderedSender against a real event bus actor: a bus restart loses nothing sent to it in
the meantime, in order; a bus that never returns costs a bounded, counted queue."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from actors.launcher import RemoteBus
from actors.ordered_sender import OrderedSender
from tests.standard import until


def wire(i: int) -> dict[str, Any]:
    return {"component": "Camera", "topic": f"t{i:03d}", "seq": i, "tai": 0.0, "data": {"i": i}}


async def test_events_sent_while_the_bus_restarts_all_arrive(ray_session: None) -> None:
    bus = RemoteBus.options(max_restarts=-1, num_cpus=0).remote()
    await bus.stats.remote()
    sender = OrderedSender(bus.publish_many.remote, "test-sender", retry_initial=0.05)
    ray.kill(bus, no_restart=False)
    await asyncio.sleep(0.5)  # what reached the old bus before it died is gone with it
    for i in range(40):
        sender.put(wire(i))
        await asyncio.sleep(0.05)

    async def arrived() -> bool:
        try:
            latest = await bus.snapshot.remote()
        except ray.exceptions.RayError:
            return False
        return {e["topic"] for e in latest} == {f"t{i:03d}" for i in range(40)}

    await until(arrived, timeout=60)
    assert sender.dropped == 0 and sender.pending == 0
    await sender.close()
    ray.kill(bus, no_restart=True)


async def test_a_bus_that_never_returns_costs_a_bounded_counted_queue(ray_session: None) -> None:
    bus = RemoteBus.options(max_restarts=0, num_cpus=0).remote()
    await bus.stats.remote()
    ray.kill(bus, no_restart=True)
    sender = OrderedSender(bus.publish_many.remote, "test-dead", max_pending=10, retry_max=0.1)
    for i in range(30):
        sender.put(wire(i))
    await until(lambda: sender.retries >= 2, timeout=30)
    assert sender.pending == 10 and sender.dropped == 20
    await sender.close()
