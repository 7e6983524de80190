"""Property-based fuzzing of a running gateway (Hypothesis, derandomized: the same frames every
run). Random and adversarial frames over both encodings, from a watcher, a scientist, a batch
identity and the OCS, and malformed HTTP requests: no request is a 500, no connection is
dropped, no unauthorized command changes a state, no NaN reaches a JSON client, and a
bystander receives every heartbeat while /metrics, /readyz and the dashboard keep answering.
And random valid payloads round-trip unchanged through every door (client, raw frame, HTTP).

``DMCS_FUZZ_FRAMES`` and ``DMCS_FUZZ_REQUESTS`` scale the run (defaults: 2,000 and 150).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.client import Client
from commands.gateway import HUB
from commands.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from commands.server import RunningSystem
from state.contracts import ContractError, check_value
from tests.conftest import TOKENS, component_spec
from tests.test_gateway_doors import Bystander, beats_go_on, strict_json

NAME = "HeaderService"
FRAMES = int(os.environ.get("DMCS_FUZZ_FRAMES", "2000"))
REQUESTS = int(os.environ.get("DMCS_FUZZ_REQUESTS", "150"))
COMMANDS = ["start", "enable", "disable", "standby", "exitControl", "setLogLevel", "nope"]
TOPICS = ["weather", "seeing", "pointing", "predictedSchedule", "nextVisit", "endReadout", "tides"]
ADVERSARIAL_TEXT = ["\ud800", "\udcff", "x" * 300, "", "*", "../../etc/passwd", "\x00", "é"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(ADVERSARIAL_TEXT),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(ADVERSARIAL_TEXT), inner, max_size=4
        )
    ),
    max_leaves=12,
)
frames = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 1, 2, None, "1"]),
        "op": st.sampled_from(
            ["command", "subscribe", "unsubscribe", "telemetry", "camera", "ping", "ack", "dance"]
        ),
    },
    optional={
        "id": scalars,
        "component": st.sampled_from([NAME, "OCS", "*", *ADVERSARIAL_TEXT]) | scalars,
        "name": st.sampled_from(COMMANDS + TOPICS) | scalars,
        "topic": st.sampled_from(TOPICS) | scalars,
        "data": values,
        "params": values,
        "timeout": scalars,
        "components": values,
        "topics": values,
    },
)
depths = st.integers(min_value=30, max_value=3000)
raw_payloads = st.one_of(
    st.binary(max_size=64),
    depths.map(lambda n: "[" * n + "]" * n),
    depths.map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(min_value=4000, max_value=6000).map(
        lambda n: '{"v":1,"op":"ping","id":' + "9" * n + "}"
    ),
)
messages = st.one_of(frames, frames, frames, raw_payloads)


def collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` examples of ``strategy``, the same ones every run."""
    found: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def take(example: Any) -> None:
        found.append(example)

    take()
    return found


def encode(message: Any, binary: bool) -> bytes | str:
    """The message in the connection's encoding (raw bytes where it cannot be encoded)."""
    if isinstance(message, bytes | str):
        return message
    if binary:
        try:
            return msgpack.packb(message)
        except (OverflowError, UnicodeEncodeError, ValueError, TypeError):
            return json.dumps(message).encode()[:200]
    return json.dumps(message)  # NaN, Infinity and lone surrogates (escaped) included


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


class Fuzzer:
    """One connection: sends its share of frames while a reader drains and checks answers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, binary: bool) -> None:
        self.ws, self.binary = ws, binary
        self.errors = 0
        self.codes: set[str] = set()
        self.ponged = asyncio.Event()

    async def send(self, payload: bytes | str) -> None:
        if isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        else:
            await self.ws.send_str(payload)

    async def read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                decoded = msgpack.unpackb(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                decoded = strict_json(message.data)
            else:
                return
            if decoded["op"] == "error":
                self.errors += 1
                self.codes.add(decoded["code"])
            elif decoded["op"] == "pong" and decoded.get("id") == -1:
                self.ponged.set()


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
            message = example
            if who == "ocs" and isinstance(example, dict) and example.get("op") == "command":
                message = {**example, "op": "ping"}  # the OCS may command: fuzz its input only
            await fuzzer.send(encode(message, fuzzer.binary))
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


PATHS = [
    "/api/v1/telemetry/{x}",
    "/api/v1/camera/{x}",
    "/api/v1/components/{x}/commands/{y}",
    f"/api/v1/components/{NAME}/commands/{{y}}",
    "/api/v1/components/{x}",
    "/api/v1/alerts/{x}",
    "/api/v1/alarms/{x}/mute",
    f"/api/v1/alarms/Heartbeat.{NAME}/{{y}}",
    "/api/v1/schedule",
    "/api/v1/dashboard/session",
    "/api/v1/status",
    "/metrics",
    "/ws",
    "/alerts/v1/stream",
]
requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "POST", "PUT"]),
        "path": st.sampled_from(PATHS),
        "x": st.binary(max_size=24) | st.sampled_from([b"weather", b"99999999999999999999"]),
        "y": st.sampled_from([b"start", b"mute", b"acknowledge", b"setLogLevel"])
        | st.binary(max_size=12),
        "query": st.sampled_from([b"", b"?timeout=nan", b"?timeout=1e999", b"?format=json"]),
        "token": st.sampled_from([None, *TOKENS.values()]).map(lambda t: t.encode() if t else None)
        | st.binary(min_size=1, max_size=16),
        "body": st.one_of(
            st.just(b""),
            st.binary(max_size=64),
            values.map(lambda v: json.dumps(v).encode()),
            raw_payloads.map(lambda p: p if isinstance(p, bytes) else p.encode()),
        ),
    }
)


async def send_raw(running: RunningSystem, request: dict[str, Any]) -> int:
    quote = urllib.parse.quote_from_bytes
    path = request["path"].format(x=quote(request["x"]), y=quote(request["y"]))
    head = [f"{request['method']} {path}".encode() + request["query"] + b" HTTP/1.1"]
    head += [b"Host: fuzz", b"Connection: close", b"Content-Type: application/json"]
    token = request["token"]
    if token is not None:
        head.append(b"Authorization: Bearer " + token.replace(b"\r", b"").replace(b"\n", b""))
    head.append(b"Content-Length: " + str(len(request["body"])).encode())
    reader, writer = await asyncio.open_connection(running.host, running.port)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + request["body"])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1])


async def test_malformed_http_requests_are_never_a_server_error(
    running: RunningSystem, bystander: Bystander
) -> None:
    statuses: dict[int, int] = {}
    for request in await asyncio.to_thread(collect, requests, REQUESTS):
        status = await send_raw(running, request)
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
