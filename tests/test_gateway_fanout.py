"""The gateway's fan-out end to end: one topic-filter rule on both sides, and an event that
cannot be encoded stays with that event instead of stopping the pump."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from commands.client import Client
from commands.gateway import HUB
from commands.server import RunningSystem
from state.clock import tai_now
from state.events import Event
from tests.conftest import TOKENS, component_spec
from tests.standard import wait_for_event

NAME = "HeaderService"


@pytest.fixture(scope="module")
async def running(system_factory: Any) -> RunningSystem:
    spec = component_spec(NAME, "summit.header_service:HeaderService")
    return await system_factory(spec, heartbeat_interval=0.2)


@pytest.mark.parametrize("use_json", [False, True])
async def test_star_means_every_component_for_the_client(
    running: RunningSystem, use_json: bool
) -> None:
    async with Client(running.ws_url, token=TOKENS["operator"], use_json=use_json) as client:
        beats = client.subscribe(components=["*"], topics=["heartbeat"], snapshot=False)
        event = await wait_for_event(beats, lambda e: True)
        await beats.aclose()
    assert (event.component, event.topic) == (NAME, "heartbeat")


async def two_heartbeats(stream: AsyncIterator[Event]) -> None:
    first = await wait_for_event(stream, lambda e: e.topic == "heartbeat")
    await wait_for_event(stream, lambda e: e.topic == "heartbeat" and e.seq > first.seq)


def _wire(seq: int, data: dict[str, Any], topic: str = "weather") -> dict[str, Any]:
    return {
        "component": "OCS",
        "topic": topic,
        "seq": seq,
        "tai": tai_now(),
        "data": data,
        "kind": "telemetry",
    }


async def test_an_unencodable_event_stops_neither_the_pump_nor_any_client(
    running: RunningSystem,
) -> None:
    """Published straight onto the bus (no door to refuse it): an event that is not one (a
    text seq), an int wider than 64 bits and a lone surrogate, which msgpack cannot encode.
    Both encodings' clients go on receiving, /readyz stays 200, each failure is counted in
    /metrics, and a later subscriber is not cut off at its snapshot."""
    hub = running.app[HUB]
    failures_before = hub.encode_failures
    async with (
        Client(running.ws_url, token=TOKENS["operator"]) as packed,
        Client(running.ws_url, token=TOKENS["operator"], use_json=True) as text,
        aiohttp.ClientSession() as http,
    ):
        streams = [
            await c.open_subscription([NAME, "OCS"], ["heartbeat", "weather"], snapshot=False)
            for c in (packed, text)
        ]
        await hub.bus.publish.remote({"component": "OCS", "topic": "weather", "seq": "one"})
        await hub.bus.publish.remote(_wire(1, {"x": 10**30}))
        await hub.bus.publish.remote(_wire(2, {"x": "\ud800"}))
        await hub.bus.publish.remote(_wire(3, {"x": 1.5}))
        await hub.bus.publish.remote(_wire(1, {"x": -(10**30)}, topic="seeing"))
        for stream in streams:
            good = await wait_for_event(stream, lambda e: e.topic == "weather" and e.seq == 3)
            assert good.data == {"x": 1.5}
            await two_heartbeats(stream)
        assert hub.encode_failures == failures_before + 2  # msgpack only; JSON can say both
        assert hub.follower.failed == 1  # the malformed one: skipped by the pump
        async with http.get(f"{running.http_url}/readyz") as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{running.http_url}/metrics") as response:
            exposition = await response.text()
        assert "dmcs_events_skipped_total 1.0" in exposition
        assert "dmcs_event_encode_failures_total 2.0" in exposition
        async with Client(running.ws_url, token=TOKENS["operator"]) as late:
            beats = late.subscribe(["*"], ["seeing", "heartbeat"])
            await wait_for_event(beats, lambda e: e.topic == "heartbeat")
            await beats.aclose()
        assert hub.encode_failures == failures_before + 3  # the "seeing" snapshot, skipped
        for stream in streams:
            await stream.aclose()
