"""Every door of the gateway against the messages that used to break it for everyone
(issue 15): each is refused with its documented error, is never cached or forwarded, and
changes nothing for a bystander, who keeps receiving heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest

from base.alerts.filters import FilterError, compile_filter
from commands.client import Client
from commands.gateway import HUB, MAX_PENDING_CONTROL, MAX_SUBSCRIPTIONS
from commands.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from commands.server import RunningSystem
from state.command import param_specs, validate_params
from state.contracts import ContractError
from state.errors import CommandRejected
from summit.summit_buffer import SummitBuffer
from tests.conftest import TOKENS, component_spec

NAME = "HeaderService"
DEEP = "[" * 1000 + "]" * 1000
HUGE = "9" * 30


@pytest.fixture(scope="module")
async def running(system_factory: Any) -> RunningSystem:
    spec = component_spec(NAME, "summit.header_service:HeaderService")
    return await system_factory(spec, client_queue=200)


class Bystander:
    """A msgpack client that follows every heartbeat for the whole module."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.beats: list[int] = []
        self.arrived = asyncio.Event()
        self.failure: Exception | None = None

    async def follow(self) -> None:
        try:
            async for event in self.client.subscribe([NAME], ["heartbeat"], snapshot=False):
                self.beats.append(event.seq)
                self.arrived.set()
        except Exception as e:
            self.failure = e
            self.arrived.set()
            raise


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


async def beats_go_on(watch: Bystander) -> None:
    """The bystander still gets fresh heartbeats, every one of them, in order."""
    seen = len(watch.beats)
    async with asyncio.timeout(10):
        while len(watch.beats) < seen + 2:
            assert watch.failure is None, f"the bystander's stream failed: {watch.failure!r}"
            watch.arrived.clear()
            await watch.arrived.wait()
    assert watch.beats == list(range(watch.beats[0], watch.beats[0] + len(watch.beats)))
    assert watch.client.gaps.missing == 0


def strict_json(text: str) -> Any:
    """JSON as a browser parses it: NaN and Infinity are errors."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


class Raw:
    """One raw WebSocket connection that reads frames on demand."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, binary: bool) -> None:
        self.ws, self.binary = ws, binary

    async def send(self, message: Any) -> None:
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        elif isinstance(message, str):
            await self.ws.send_str(message)
        elif self.binary:
            await self.ws.send_bytes(msgpack.packb(message))
        else:
            await self.ws.send_str(json.dumps(message))

    async def next(self, op: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                message = await self.ws.receive()
                assert message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), message
                if message.type == aiohttp.WSMsgType.BINARY:
                    decoded = msgpack.unpackb(message.data)
                else:
                    decoded = strict_json(message.data)
                if decoded["op"] == op:
                    return decoded

    async def still_works(self) -> None:
        await self.send({"v": 1, "op": "ping", "id": 77})
        assert (await self.next("pong"))["id"] == 77


@pytest.fixture
async def connect(
    running: RunningSystem,
) -> AsyncIterator[Callable[..., Awaitable[Raw]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def open_one(who: str | None = "ocs", binary: bool = False) -> Raw:
            headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
            session = await stack.enter_async_context(aiohttp.ClientSession(headers=headers))
            protocol = SUBPROTOCOL_MSGPACK if binary else SUBPROTOCOL_JSON
            ws = await stack.enter_async_context(
                session.ws_connect(running.ws_url, protocols=(protocol,))
            )
            raw = Raw(ws, binary)
            await raw.next("hello")
            return raw

        yield open_one


@pytest.fixture
async def http(running: RunningSystem) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    async with aiohttp.ClientSession(running.http_url) as session:

        async def call(method: str, path: str, who: str | None = None, **kw: Any) -> Any:
            headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
            headers.update(kw.pop("headers", {}))
            async with session.request(method, path, headers=headers, **kw) as response:
                return response.status, await response.text()

        yield call


async def everything_answers(http: Callable[..., Awaitable[Any]]) -> None:
    for path in ("/metrics", "/readyz", "/api/v1/status", "/api/v1/schedule"):
        status, body = await http("GET", path)
        assert status == 200, (path, body)
    status, body = await http("GET", "/api/v1/dashboard/snapshot")
    assert status == 200
    strict_json(body)


# ------------------------------------------------------------------ OCS input
BAD_INPUT = [
    ("telemetry", "weather", f'{{"x": {HUGE}}}', "64-bit"),
    ("telemetry", "weather", '{"x": "\\ud800"}', "UTF-8"),
    ("telemetry", "seeing", '{"fwhm": NaN}', "finite"),
    ("telemetry", "seeing", '{"fwhm": Infinity}', "finite"),
    ("camera", "nextVisit", '{"visit": "abc"}', "'visit'"),
    ("camera", "nextVisit", '{"band": "r"}', "'visit': Field required"),
    ("camera", "nextVisit", '{"visit": Infinity}', "finite"),
    ("camera", "nextVisit", '{"visit": 1, "startMjd": 1e300}', "startMjd"),
    ("camera", "startIntegration", '{"imageName": []}', "'imageName'"),
    ("telemetry", "predictedSchedule", '{"visits": [{"visit": 1, "startMjd": 1e300}]}', "startMjd"),
]


@pytest.mark.parametrize(("op", "topic", "data", "reason"), BAD_INPUT)
async def test_bad_ocs_input_is_refused_at_the_websocket_and_never_cached(
    running: RunningSystem,
    bystander: Bystander,
    connect: Callable[..., Awaitable[Raw]],
    http: Callable[..., Awaitable[Any]],
    op: str,
    topic: str,
    data: str,
    reason: str,
) -> None:
    ocs = await connect("ocs")
    key = "topic" if op == "telemetry" else "name"
    await ocs.send(f'{{"v": 1, "op": "{op}", "{key}": "{topic}", "data": {data}, "id": 5}}')
    error = await ocs.next("error")
    assert error["code"] == "bad_field" and reason in error["message"], error
    source = "OCS" if op == "telemetry" else "Camera"
    assert (source, topic) not in running.app[HUB].latest
    await ocs.still_works()
    await beats_go_on(bystander)
    await everything_answers(http)


@pytest.mark.parametrize(("op", "topic", "data", "reason"), BAD_INPUT)
async def test_bad_ocs_input_over_http_is_a_400(
    running: RunningSystem,
    http: Callable[..., Awaitable[Any]],
    op: str,
    topic: str,
    data: str,
    reason: str,
) -> None:
    route = "telemetry" if op == "telemetry" else "camera"
    headers = {"Content-Type": "application/json"}
    status, body = await http("POST", f"/api/v1/{route}/{topic}", "ocs", data=data, headers=headers)
    assert status == 400 and reason in body, body
    source = "OCS" if op == "telemetry" else "Camera"
    assert (source, topic) not in running.app[HUB].latest


async def test_a_later_subscriber_gets_its_snapshot(
    running: RunningSystem, connect: Callable[..., Awaitable[Raw]]
) -> None:
    ocs = await connect("ocs", binary=True)
    await ocs.send({"v": 1, "op": "telemetry", "topic": "weather", "data": {"temperature": 9.5}})
    await asyncio.sleep(0.5)
    watcher = await connect(None, binary=True)
    await watcher.send({"v": 1, "op": "subscribe", "id": 1, "components": ["OCS"]})
    event = await watcher.next("event")
    assert event["snapshot"] and event["event"]["data"] == {"temperature": 9.5}


# ---------------------------------------------------------------- frames
async def test_error_frames_echo_no_nan(connect: Callable[..., Awaitable[Raw]]) -> None:
    raw = await connect("ocs")
    await raw.send('{"v": 1, "op": "ping", "id": NaN}')
    error = await raw.next("error")  # strict_json: would raise on a bare NaN
    assert error["id"] is None and error["code"] == "bad_field"
    await raw.send(f'{{"v": 1, "op": "ping", "id": {HUGE}}}')
    assert (await raw.next("error"))["id"] is None
    await raw.still_works()


@pytest.mark.parametrize("binary", [False, True])
async def test_deeply_nested_frames_are_bad_frames(
    connect: Callable[..., Awaitable[Raw]], bystander: Bystander, binary: bool
) -> None:
    raw = await connect("ocs", binary)
    deep: Any = []
    for _ in range(1000):
        deep = [deep]
    payload = msgpack.packb({"v": 1, "op": "ping", "id": 1, "x": deep}) if binary else DEEP
    await raw.send(payload)
    error = await raw.next("error")
    assert error["code"] == "bad_frame"
    nested: Any = 1
    for _ in range(40):  # over the 32 levels any frame may nest
        nested = [nested]
    await raw.send({"v": 1, "op": "ping", "id": 2, "x": nested})
    assert (await raw.next("error"))["code"] == "bad_frame"
    await raw.still_works()
    await beats_go_on(bystander)


async def test_watcher_command_to_a_surrogate_name_leaves_metrics_answering(
    connect: Callable[..., Awaitable[Raw]], http: Callable[..., Awaitable[Any]]
) -> None:
    watcher = await connect(None)
    await watcher.send('{"v":1,"op":"command","id":1,"component":"\\ud800","name":"start"}')
    assert (await watcher.next("error"))["code"] == "bad_field"
    for i in range(150):
        name = f"Made{i}Up" + "x" * 60
        await watcher.send({"v": 1, "op": "command", "id": 1, "component": name, "name": name})
        assert (await watcher.next("ack"))["ack"]["code"] == -302  # unknown component
        await watcher.send({"v": 1, "op": "command", "id": 2, "component": NAME, "name": f"c{i}"})
        await watcher.next("ack")
    status, text = await http("GET", "/metrics")
    assert status == 200
    lines = [line for line in text.splitlines() if line.startswith("dmcs_commands_total{")]
    assert not any("Made" in line for line in lines)
    assert any('component="unknown"' in line for line in lines)
    assert len(lines) <= 70


async def test_a_flood_of_subscribes_without_reading_is_bounded(
    running: RunningSystem, bystander: Bystander
) -> None:
    before = set(running.app[HUB].channels)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(running.ws_url, protocols=(SUBPROTOCOL_MSGPACK,)) as ws,
    ):
        frames = [msgpack.packb({"v": 1, "op": "subscribe", "id": i}) for i in range(5000)]

        async def flood() -> None:
            for f in frames:
                await ws.send_bytes(f)

        try:
            async with asyncio.timeout(10):
                await flood()
        except TimeoutError:
            pass  # the gateway stopped reading us: the backpressure at work
        await asyncio.sleep(1.0)
        (channel,) = set(running.app[HUB].channels) - before
        assert len(channel.subscriptions) <= MAX_SUBSCRIPTIONS
        bound = MAX_PENDING_CONTROL + 2 * len(running.app[HUB].latest) + 2
        assert channel.pending_control <= bound
    await beats_go_on(bystander)


# ------------------------------------------------------------------ HTTP doors
async def test_http_bodies_that_used_to_be_500s(http: Callable[..., Awaitable[Any]]) -> None:
    headers = {"Content-Type": "application/json"}
    big = "1" + "0" * 5000
    for path, body in (
        (f"/api/v1/components/{NAME}/commands/setLogLevel", DEEP),
        (f"/api/v1/components/{NAME}/commands/setLogLevel", f'{{"level": {big}}}'),
        ("/api/v1/telemetry/seeing", f'{{"fwhm": {big}}}'),
        ("/api/v1/telemetry/seeing", DEEP),
    ):
        status, text = await http("POST", path, "ocs", data=body, headers=headers)
        assert status == 400, (path, status, text)
    status, _ = await http("POST", f"/api/v1/components/{NAME}/commands/start?timeout=nan", "ocs")
    assert status == 400
    await everything_answers(http)


async def test_alarm_actions_bound_durations_and_severities(
    http: Callable[..., Awaitable[Any]],
) -> None:
    alarm = f"/api/v1/alarms/Heartbeat.{NAME}"
    headers = {"Content-Type": "application/json"}
    for action, body in (
        ("mute", '{"duration": 1e999}'),
        ("mute", '{"duration": 1e9}'),
        ("mute", '{"duration": NaN}'),
        ("mute", '{"duration": 60, "severity": 1e999}'),
        ("acknowledge", '{"severity": 1e999}'),
        ("acknowledge", f'{{"severity": {"9" * 5000}}}'),
        ("acknowledge", DEEP),
    ):
        status, text = await http(
            "POST", f"{alarm}/{action}", "operator", data=body, headers=headers
        )
        assert status == 422, (action, body[:40], status, text)
    status, _ = await http("POST", f"{alarm}/mute", "operator", json={"duration": 60})
    assert status == 200
    status, _ = await http("POST", f"{alarm}/unmute", "operator")
    assert status == 200


async def test_non_utf8_bearer_token_is_a_401(running: RunningSystem) -> None:
    for path in ("/api/v1/dashboard/session", "/ws", "/alerts/v1/stream"):
        reader, writer = await asyncio.open_connection(running.host, running.port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
            + b"Authorization: Bearer \xff\xfe\xed\xa0\x80\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status_line.split()[1] == b"401", (path, status_line)


async def test_alert_ids_beyond_64_bits_are_a_400(http: Callable[..., Awaitable[Any]]) -> None:
    status, _ = await http("GET", "/api/v1/alerts/99999999999999999999", "scientist")
    assert status == 400
    status, _ = await http("GET", f"/api/v1/alerts/{'9' * 5000}", "scientist")
    assert status == 400


async def test_alert_stream_answers_deep_json_with_bad_frame(running: RunningSystem) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['scientist']}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.ws_connect(f"{running.http_url}/alerts/v1/stream") as ws,
    ):
        await ws.send_str(DEEP)
        error = json.loads((await ws.receive(timeout=10)).data)
        assert error["op"] == "error" and error["code"] == "bad_frame"
        for expression in (
            "diaSource.snr > " + "1" * 400,
            "diaSourceId * 10000000000000000000 > 0",
        ):
            await ws.send_str(json.dumps({"v": 1, "op": "subscribe", "expression": expression}))
            error = json.loads((await ws.receive(timeout=10)).data)
            assert error["code"] == "bad_filter" and "out of range" in error["message"]
        await ws.send_str(json.dumps({"v": 1, "op": "ping", "id": 3}))
        assert json.loads((await ws.receive(timeout=10)).data)["op"] == "pong"


# ------------------------------------------------------------------ compile-time checks
@pytest.mark.parametrize(
    "expression",
    [
        "diaSource.snr > " + "1" * 400,
        "diaSource.diaSourceId * 10000000000000000000 > 0",
        "diaSource.snr > 1e999",
        "diaSource.band in ('r', " + "1" * 30 + ")",
    ],
)
def test_filters_with_numbers_out_of_range_are_refused_when_compiled(expression: str) -> None:
    with pytest.raises(FilterError, match="out of range"):
        compile_filter(expression)


def test_filter_arithmetic_that_overflows_is_inf_not_an_error() -> None:
    f = compile_filter("diaSource.diaSourceId * 9000000000000000000 * 9000000000000000000 > 0")
    assert f.matches({"diaSource": {"diaSourceId": 2**62}})
    table = {"diaSource.diaSourceId": np.array([2**62, 1], dtype=np.int64)}
    assert f.mask(table, 2).tolist() == [True, True]


@pytest.mark.parametrize("command", ["setLinkBandwidth", "setCatchupRate"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_buffer_rates_refuse_nan(command: str, bad: float) -> None:
    specs = param_specs(getattr(SummitBuffer, f"do_{command}"))
    with pytest.raises(CommandRejected, match="finite"):
        validate_params(command, specs, {"mbps": bad})


async def test_the_client_checks_input_before_sending(running: RunningSystem) -> None:
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        with pytest.raises(ContractError, match="'visit'"):
            await ocs.send_camera_event("nextVisit", visit="abc")
        with pytest.raises(ContractError, match="finite"):
            await ocs.send_telemetry("seeing", fwhm=math.nan)
        await ocs.send_telemetry("seeing", fwhm=0.7)
