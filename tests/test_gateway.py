"""The gateway's wire protocol, HTTP API and robustness against bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from click.testing import CliRunner

from commands.cli import main
from commands.client import Client
from commands.gateway import HUB
from commands.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from commands.server import RunningSystem
from state.errors import InvalidInputError
from state.states import State
from tests.conftest import TOKENS, component_spec
from tests.standard import wait_for_event

NAME = "HeaderService"
MAX_FRAME = 4096


@pytest.fixture(scope="module")
async def running(system_factory: Any) -> RunningSystem:
    spec = component_spec(NAME, "summit.header_service:HeaderService")
    return await system_factory(spec, max_frame_bytes=MAX_FRAME, client_queue=50)


@pytest.fixture
async def raw_ws(running: RunningSystem) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    headers = {"Authorization": f"Bearer {TOKENS['ocs']}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.ws_connect(running.ws_url, protocols=(SUBPROTOCOL_MSGPACK,)) as ws,
    ):
        hello = msgpack.unpackb(await ws.receive_bytes())
        assert hello["op"] == "hello" and hello["identity"] == "ocs"
        yield ws


async def next_frame(ws: aiohttp.ClientWebSocketResponse, op: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            message = await ws.receive()
            decoded = (
                msgpack.unpackb(message.data)
                if message.type == aiohttp.WSMsgType.BINARY
                else json.loads(message.data)
            )
            if decoded["op"] == op:
                return decoded


async def still_works(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_bytes(msgpack.packb({"v": 1, "op": "ping", "id": 99}))
    assert (await next_frame(ws, "pong"))["id"] == 99


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"\xc1\xff\x00", "bad_frame", "malformed msgpack"),
        (msgpack.packb([1, 2, 3]), "bad_frame", "must be a map"),
        (msgpack.packb({"op": "ping", "id": 1}), "bad_version", "protocol version"),
        (msgpack.packb({"v": 7, "op": "ping", "id": 1}), "bad_version", "speaks v1"),
        (msgpack.packb({"v": 1, "op": "dance", "id": 1}), "unknown_op", "unknown op 'dance'"),
        (msgpack.packb({"v": 1, "op": "ack", "id": 1}), "unknown_op", "not sent by clients"),
        (
            msgpack.packb({"v": 1, "op": "command", "id": 3, "component": NAME}),
            "bad_field",
            "field 'name' must be str",
        ),
        (
            msgpack.packb(
                {"v": 1, "op": "command", "id": 4, "component": NAME, "name": "x", "params": [1]}
            ),
            "bad_field",
            "field 'params' must be dict",
        ),
        (
            msgpack.packb({"v": 1, "op": "telemetry", "topic": "tides", "data": {}}),
            "unknown_topic",
            "unknown telemetry topic 'tides'",
        ),
        (b"\x00" * (MAX_FRAME + 1), "too_large", "exceeds the 4096-byte limit"),
    ],
)
async def test_bad_frames_get_error_frames_and_connection_stays(
    raw_ws: aiohttp.ClientWebSocketResponse, payload: bytes, code: str, reason: str
) -> None:
    await raw_ws.send_bytes(payload)
    error = await next_frame(raw_ws, "error")
    assert error["code"] == code
    assert reason in error["message"]
    await still_works(raw_ws)


async def test_malformed_json_on_a_json_connection(running: RunningSystem) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(running.ws_url, protocols=(SUBPROTOCOL_JSON,)) as ws,
    ):
        assert ws.protocol == SUBPROTOCOL_JSON
        await ws.send_str('{"v": 1, "op": "ping", "id": ')
        error = await next_frame(ws, "error")
        assert "malformed JSON" in error["message"]
        await ws.send_str(json.dumps({"v": 1, "op": "ping", "id": 5}))
        assert (await next_frame(ws, "pong"))["id"] == 5


async def test_watcher_cannot_send_ocs_input(running: RunningSystem) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(running.ws_url) as ws,
    ):
        await ws.send_bytes(
            msgpack.packb({"v": 1, "op": "camera", "name": "endReadout", "data": {}})
        )
        error = await next_frame(ws, "error")
        assert error["code"] == "not_permitted"


async def test_bad_token_is_refused_at_connect(running: RunningSystem) -> None:
    with pytest.raises(InvalidInputError, match="refused the token"):
        async with Client(running.ws_url, token="forged"):
            pass


async def test_json_client_commands_and_events(running: RunningSystem) -> None:
    async with Client(running.ws_url, token=TOKENS["operator"], use_json=True) as client:
        events = client.subscribe([NAME], ["summaryState"])
        snapshot = await wait_for_event(events, lambda e: True)
        assert snapshot.data["summaryState"] in {s.name for s in State}
        await client.set_state(NAME, State.DISABLED)
        await client.set_state(NAME, State.STANDBY)
        await events.aclose()


async def test_a_subscription_to_an_unknown_component_is_refused(running: RunningSystem) -> None:
    """It would wait for ever for events that never come: refused, naming the known ones."""
    async with Client(running.ws_url) as client:
        with pytest.raises(InvalidInputError, match="unknown_component") as info:
            await client.open_subscription(["Nope", NAME], ["summaryState"], timeout=5)
        assert "'Nope'" in str(info.value) and NAME in str(info.value)
        assert "Camera" in str(info.value), "the external sources are known too"
        async with await client.open_subscription([NAME, "Camera"], snapshot=False, timeout=5):
            pass
    cli = await asyncio.to_thread(
        CliRunner().invoke, main, ["events", "--url", running.ws_url, "--component", "Nope"]
    )
    assert cli.exit_code == 1
    assert "unknown component 'Nope'; known components:" in cli.output and NAME in cli.output


async def test_http_endpoints(running: RunningSystem) -> None:
    base = running.http_url
    auth = {"Authorization": f"Bearer {TOKENS['ocs']}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with asyncio.timeout(10):  # 503 until the event pump has subscribed
            while True:
                async with session.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        assert (await r.json())["ready"] is True
                        break
                    assert r.status == 503
                await asyncio.sleep(0.1)
        async with session.get(f"{base}/api/v1/status") as r:
            names = [c["name"] for c in (await r.json())["components"]]
            assert names == [NAME]
        url = f"{base}/api/v1/components/{NAME}/commands"
        async with session.post(f"{url}/start", json={}) as r:
            assert r.status == 403  # no token: a watcher
            assert (await r.json())["acks"][-1]["code"] == -300
        async with session.post(f"{url}/start", json={"bogus": 1}, headers=auth) as r:
            assert r.status == 422
            assert "unknown parameter 'bogus'" in (await r.json())["acks"][-1]["result"]
        async with session.post(f"{url}/start", data="{not json", headers=auth) as r:
            assert r.status == 400
        nope = f"{base}/api/v1/components/Nope/commands/start"
        async with session.post(nope, json={}, headers=auth) as r:
            assert r.status == 404, "as GET of an unknown component (was 422)"
            assert "unknown component 'Nope'" in (await r.json())["acks"][-1]["result"]
        async with session.post(f"{url}/start", json={}, headers=auth) as r:
            assert r.status == 200
            assert [a["code"] for a in (await r.json())["acks"]] == [300, 303]
        async with session.post(f"{url}/standby", headers=auth) as r:
            assert r.status == 200
        async with session.post(f"{base}/api/v1/telemetry/seeing", json={"fwhm": 0.7}) as r:
            assert r.status == 403
        async with session.post(
            f"{base}/api/v1/telemetry/seeing", json={"fwhm": 0.7}, headers=auth
        ) as r:
            assert r.status == 200
        async with session.get(f"{base}/metrics") as r:
            text = await r.text()
            assert "dmcs_commands_total" in text
            assert f'dmcs_component_heartbeat_ok{{component="{NAME}"}} 1.0' in text


async def test_batch_telemetry_needs_a_batch_identity(running: RunningSystem) -> None:
    """Reprocessing telemetry is published as source Reprocess, from batch identities only;
    a batch identity may not pose as the OCS."""
    base = running.http_url
    progress = {"run": "dr1", "phase": "ccd", "done": 1, "total": 4}

    def auth(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[who]}"}

    async with (
        aiohttp.ClientSession() as session,
        Client(running.ws_url, token=TOKENS["batch"]) as batch,
        Client(running.ws_url) as watcher,
    ):
        url = f"{base}/api/v1/telemetry/reprocessProgress"
        async with session.post(url, json=progress, headers=auth("ocs")) as r:
            assert r.status == 403 and "may not send batch telemetry" in await r.text()
        async with session.post(url, json=progress, headers=auth("batch")) as r:
            assert r.status == 200
        seeing = f"{base}/api/v1/telemetry/seeing"
        async with session.post(seeing, json={"fwhm": 0.7}, headers=auth("batch")) as r:
            assert r.status == 403
        async with await watcher.open_subscription(
            ["Reprocess"], ["reprocessProgress"], snapshot=False
        ) as events:
            await batch.send_telemetry("reprocessProgress", **{**progress, "done": 2})
            event = await wait_for_event(events, lambda e: e.data["done"] == 2)
    assert (event.component, event.kind, event.data["done"]) == ("Reprocess", "telemetry", 2)


async def test_slow_subscriber_never_delays_others(running: RunningSystem) -> None:
    """A client that stops reading loses the oldest events (counted on the server); a client
    that reads sees every heartbeat, in order, meanwhile."""
    stalled = await stalled_subscriber(running)
    async with (
        Client(running.ws_url, token=TOKENS["operator"]) as healthy,
        Client(running.ws_url, token=TOKENS["ocs"]) as ocs,
    ):
        beats = healthy.subscribe([NAME], ["heartbeat"], snapshot=False)
        first = await wait_for_event(beats, lambda e: True)
        filler = "x" * 3000
        for _ in range(2000):
            await ocs.send_telemetry("seeing", fwhm=0.8, note=filler)
        last = await wait_for_event(beats, lambda e: e.seq >= first.seq + 4, timeout=20)
        await beats.aclose()
        assert healthy.gaps.missing == 0
        assert last.seq >= first.seq + 4
        stalled_channels = [c for c in running.app[HUB].channels if c.identity == ""]
        assert sum(c.dropped for c in stalled_channels) > 0
    stalled.close()


async def stalled_subscriber(running: RunningSystem) -> asyncio.StreamWriter:
    """A WebSocket client that subscribes to everything and then never reads a byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (running.host, running.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {running.host}:{running.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    payload = msgpack.packb({"v": 1, "op": "subscribe", "id": 1})
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x82, 0x80 | len(payload)]) + mask + masked)
    await writer.drain()
    return writer


async def test_client_reconnects_and_resubscribes(running: RunningSystem) -> None:
    async with Client(running.ws_url, token=TOKENS["ocs"], max_backoff=0.5) as client:
        beats = client.subscribe([NAME], ["heartbeat"], snapshot=False)
        await wait_for_event(beats, lambda e: True)
        hub = running.app[HUB]
        for channel in list(hub.channels):
            await channel.ws.close()
        await wait_for_event(beats, lambda e: True, timeout=15)
        await client.wait_connected()
        assert await client.get_state(NAME) in set(State)
        await beats.aclose()


async def test_a_gateway_on_localhost_answers_on_each_of_its_addresses(
    system_factory: Any, localhost_addresses: list[str]
) -> None:
    """Both 127.0.0.1 and ::1 (where the machine has it) reach the gateway of ``host =
    "localhost"`` (before: only the first address localhost resolved to)."""
    spec = component_spec("HeaderService", "summit.header_service:HeaderService")
    running = await system_factory(spec, host="localhost")
    async with aiohttp.ClientSession() as http:
        for host in localhost_addresses:
            url = f"http://{host if ':' not in host else f'[{host}]'}:{running.port}/healthz"
            async with http.get(url) as r:
                assert (r.status, await r.json()) == (200, {"status": "ok"}), host
