"""Property-based fuzzing of a running gateway (Hypothesis, derandomized: the same frames every
run). Random and adversarial frames over both encodings, from a watcher, a scientist, a batch
identity and the OCS, and malformed HTTP requests: no request is a 500, no connection is
dropped, no unauthorized command changes a state, no NaN reaches a JSON client, and a
bystander receives every heartbeat while /metrics, /readyz and the dashboard keep answering.
And random valid payloads round-trip unchanged through every door (client, raw frame, HTTP).

``DMCS_FUZZ_FRAMES`` and ``DMCS_FUZZ_REQUESTS`` scale the run (defaults: 2,000 and 150); the
inputs are tests/fuzz_inputs.py's, which benchmarks/gateway_fuzz.py sends at full size (50,000
frames, 500 requests) and measures the gateway's memory with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import strategies as st

from commands.client import Client
from commands.gateway import HUB
from commands.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from commands.server import RunningSystem
from state.contracts import ContractError, check_value
from tests.conftest import TOKENS, component_spec
from tests.fuzz_inputs import (
    NAME,
    Fuzzer,
    collect,
    encode,
    harmless,
    http_requests,
    messages,
    send_raw,
    values,
)
from tests.test_gateway_doors import Bystander, beats_go_on, strict_json

FRAMES = int(os.environ.get("DMCS_FUZZ_FRAMES", "2000"))
REQUESTS = int(os.environ.get("DMCS_FUZZ_REQUESTS", "150"))
requests = http_requests(TOKENS.values())


@pytest.fixture(scope="module")
async def running(system_factory: Any) -> RunningSystem:
    spec = component_spec(NAME, "summit.header_service:HeaderService")
    return await system_factory(spec, client_queue=500)


@pytest.fixture(scope="module")
async def bystander(running: RunningSystem) -> AsyncIterator[Bystander]:
    async with Client(running.ws_url, token=TOKENS["operator"]) as client:
        watch = Bystander(client)
        task = asyncio.create_task(watch.follow())
        await beats_go_on(watch)
        yield watch
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def states(http: aiohttp.ClientSession) -> dict[str, str]:
    async with http.get("/api/v1/status") as r:
        assert r.status == 200
        return {c["name"]: c["summaryState"] for c in (await r.json())["components"]}


@pytest.mark.timeout(300 + FRAMES // 20)
async def test_random_and_adversarial_frames_change_nothing_for_anyone(
    running: RunningSystem, bystander: Bystander
) -> None:
    examples = await asyncio.to_thread(collect, messages, FRAMES)
    identities = [None, "scientist", "batch", "ocs"]
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession(running.http_url))
        before = await states(http)
        fuzzers: list[tuple[Fuzzer, str | None]] = []
        readers = []
        for who in identities:
            headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
            session = await stack.enter_async_context(aiohttp.ClientSession(headers=headers))
            for binary in (False, True):
                protocol = SUBPROTOCOL_MSGPACK if binary else SUBPROTOCOL_JSON
                ws = await stack.enter_async_context(
                    session.ws_connect(running.ws_url, protocols=(protocol,), max_msg_size=0)
                )
                fuzzer = Fuzzer(ws, binary)
                fuzzers.append((fuzzer, who))
                readers.append(asyncio.create_task(fuzzer.read()))
        for i, example in enumerate(examples):
            fuzzer, who = fuzzers[i % len(fuzzers)]
            await fuzzer.send(encode(harmless(example, who), fuzzer.binary))
        for fuzzer, _ in fuzzers:
            await fuzzer.send(encode({"v": 1, "op": "ping", "id": -1}, fuzzer.binary))
        async with asyncio.timeout(120 + FRAMES // 100):
            for (fuzzer, _), reader in zip(fuzzers, readers, strict=True):
                pong = asyncio.create_task(fuzzer.ponged.wait())
                await asyncio.wait([pong, reader], return_when=asyncio.FIRST_COMPLETED)
                assert not reader.done(), f"connection ended: {reader.exception()!r}"
        assert all(not f.ws.closed for f, _ in fuzzers)
        errors = sum(f.errors for f, _ in fuzzers)
        print(f"fuzz: {len(examples)} frames, {errors} error frames, bystander ok", flush=True)
        assert errors > len(examples) // 4
        assert {"bad_frame", "bad_field", "unknown_op", "bad_version"} <= set().union(
            *(f.codes for f, _ in fuzzers)
        )
        await beats_go_on(bystander)
        assert await states(http) == before
        for path in ("/metrics", "/readyz", "/healthz", "/api/v1/dashboard/snapshot"):
            async with http.get(path) as r:
                assert r.status == 200, path
        for task in readers:
            task.cancel()
    assert running.app[HUB].pumping


async def test_malformed_http_requests_are_never_a_server_error(
    running: RunningSystem, bystander: Bystander
) -> None:
    statuses: dict[int, int] = {}
    for request in await asyncio.to_thread(collect, requests, REQUESTS):
        status = await send_raw(running.host, running.port, request)
        statuses[status] = statuses.get(status, 0) + 1
        assert status != 500, (status, request)
    assert sum(statuses.values()) == REQUESTS and len(statuses) >= 3, statuses
    print(f"fuzz: {REQUESTS} HTTP requests, statuses {sorted(statuses.items())}", flush=True)
    await beats_go_on(bystander)
    async with aiohttp.ClientSession(running.http_url) as http:
        for path in ("/metrics", "/readyz", "/api/v1/schedule", "/api/v1/dashboard/snapshot"):
            async with http.get(path) as r:
                assert r.status == 200, path


def _safe(value: Any) -> bool:
    try:
        check_value(value)
    except ContractError:
        return False
    return True


def floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


typed_inputs = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "temperature": floats(-100, 100),
            "pressure": floats(0, 2000),
            "humidity": floats(0, 100),
            "windSpeed": floats(0, 500),
            "windDirection": floats(-360, 720),
        },
    ).map(lambda d: ("telemetry", "weather", d)),
    st.fixed_dictionaries(
        {},
        optional={
            "ra": floats(0, 360),
            "dec": floats(-90, 90),
            "alt": floats(-90, 90),
            "tracking": st.booleans(),
            "airmass": st.none() | floats(1, 40),
        },
    ).map(lambda d: ("telemetry", "pointing", d)),
    st.fixed_dictionaries(
        {"visit": st.integers(0, 2**63 - 1)},
        optional={
            "band": st.sampled_from("ugrizy"),
            "startMjd": floats(0, 100_000),
            "imageName": st.text(max_size=40),
            "detectors": st.lists(st.integers(0, 10_000), max_size=20),
            "note": values.filter(_safe),
        },
    ).map(lambda d: ("camera", "nextVisit", d)),
)


async def test_typed_payloads_round_trip_through_every_door(running: RunningSystem) -> None:
    """Valid payloads sent through the client (msgpack), a raw JSON frame and HTTP arrive
    unchanged at a JSON subscriber and a msgpack subscriber."""
    inputs = await asyncio.to_thread(collect, typed_inputs, 60)
    auth = {"Authorization": f"Bearer {TOKENS['ocs']}"}
    async with contextlib.AsyncExitStack() as stack:
        ocs = await stack.enter_async_context(Client(running.ws_url, token=TOKENS["ocs"]))
        session = await stack.enter_async_context(aiohttp.ClientSession(headers=auth))
        raw_ocs = await stack.enter_async_context(
            session.ws_connect(running.ws_url, protocols=(SUBPROTOCOL_JSON,))
        )
        watcher = await stack.enter_async_context(
            session.ws_connect(running.ws_url, protocols=(SUBPROTOCOL_JSON,))
        )
        sub = {"v": 1, "op": "subscribe", "id": 1, "components": ["OCS", "Camera"]}
        await watcher.send_str(json.dumps(sub))
        follower = await stack.enter_async_context(
            await ocs.open_subscription(["OCS", "Camera"], snapshot=False)
        )

        async def next_live(topic: str) -> dict[str, Any]:
            async with asyncio.timeout(20):
                while True:
                    frame = strict_json((await watcher.receive()).data)
                    live = frame["op"] == "event" and not frame["snapshot"]
                    if live and frame["event"]["topic"] == topic:
                        return frame["event"]["data"]

        for i, (kind, topic, data) in enumerate(inputs):
            match i % 3:
                case 0 if kind == "telemetry":
                    await ocs.send_telemetry(topic, **data)
                case 0:
                    await ocs.send_camera_event(topic, **data)
                case 1:
                    key = "topic" if kind == "telemetry" else "name"
                    op = "telemetry" if kind == "telemetry" else "camera"
                    await raw_ocs.send_str(json.dumps({"v": 1, "op": op, key: topic, "data": data}))
                case _:
                    route = "telemetry" if kind == "telemetry" else "camera"
                    url = f"{running.http_url}/api/v1/{route}/{topic}"
                    async with session.post(url, json=data) as r:
                        assert r.status == 200, await r.text()
            assert await next_live(topic) == data
            async with asyncio.timeout(20):
                async for event in follower:
                    if event.topic == topic:
                        assert event.data == data
                        break
