"""Fuzz inputs for the gateway, shared by tests/test_gateway_fuzz.py and benchmarks/gateway_fuzz.py:
random and adversarial frames (both encodings) and raw HTTP requests, the same every run
(Hypothesis, derandomized), and a connection that sends them and counts the answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_gateway_doors import strict_json

NAME = "HeaderService"
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


def recombined(pool: list[Any], count: int, seed: int = 0) -> Iterator[Any]:
    """``count`` messages from a pool of examples (Hypothesis is far too slow for 50,000): each
    a pool message, most frames given one field of another frame (seeded, the same every run)."""
    rng = random.Random(seed)
    maps = [m for m in pool if isinstance(m, dict) and m]
    for _ in range(count):
        message = rng.choice(pool)
        if isinstance(message, dict) and maps and rng.random() < 0.7:
            donor = rng.choice(maps)
            key = rng.choice(list(donor))
            message = {**message, key: donor[key]}
        yield message


def harmless(message: Any, identity: str | None) -> Any:
    """The OCS may command: its commands become pings, so that any state change is a bug."""
    if identity == "ocs" and isinstance(message, dict) and message.get("op") == "command":
        return {**message, "op": "ping"}
    return message


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


def http_requests(tokens: Iterable[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Raw HTTP requests to every route, bearing ``tokens`` (of the system under test) or junk."""
    known = [t.encode() for t in tokens]
    return st.fixed_dictionaries(
        {
            "method": st.sampled_from(["GET", "POST", "POST", "PUT"]),
            "path": st.sampled_from(PATHS),
            "x": st.binary(max_size=24) | st.sampled_from([b"weather", b"99999999999999999999"]),
            "y": st.sampled_from([b"start", b"mute", b"acknowledge", b"setLogLevel"])
            | st.binary(max_size=12),
            "query": st.sampled_from([b"", b"?timeout=nan", b"?timeout=1e999", b"?format=json"]),
            "token": st.sampled_from([None, *known]) | st.binary(min_size=1, max_size=16),
            "body": st.one_of(
                st.just(b""),
                st.binary(max_size=64),
                values.map(lambda v: json.dumps(v).encode()),
                raw_payloads.map(lambda p: p if isinstance(p, bytes) else p.encode()),
            ),
        }
    )


async def send_raw(host: str, port: int, request: dict[str, Any]) -> int:
    """Send one request as raw bytes (no client library cleans it up); its HTTP status."""
    quote = urllib.parse.quote_from_bytes
    path = request["path"].format(x=quote(request["x"]), y=quote(request["y"]))
    head = [f"{request['method']} {path}".encode() + request["query"] + b" HTTP/1.1"]
    head += [b"Host: fuzz", b"Connection: close", b"Content-Type: application/json"]
    token = request["token"]
    if token is not None:
        head.append(b"Authorization: Bearer " + token.replace(b"\r", b"").replace(b"\n", b""))
    head.append(b"Content-Length: " + str(len(request["body"])).encode())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + request["body"])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1])
