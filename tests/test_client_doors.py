"""The Python client when the gateway goes away: a subscription ends with ConnectionLostError
once its events are read, never waits forever for a gateway the client no longer talks to.

The gateway here is a minimal aiohttp WebSocket server speaking the real frames
(``commands.protocol``): what is under test is the client's side of a lost connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiohttp import web

from commands.client import Client
from commands.protocol import SUBPROTOCOL_JSON, Op, frame
from state.errors import ConnectionLostError
from state.events import Event

EVENTS = [
    Event("AlertPublisher", "visitLatency", seq, 1.0e9 + seq, {"visit": seq}) for seq in (1, 2)
]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _serving(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """An aiohttp server on a free port with GET ``routes``; yields its ``ws://…/ws`` URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[Callable[[], str]]:
    """A gateway that confirms one subscription, sends two events and drops the connection;
    any later connection is refused with 401 (the token was revoked while it was away)."""
    connections = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        connections += 1
        if connections > 1:
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL_JSON,))
        await ws.prepare(request)
        sub = json.loads((await ws.receive()).data)
        await ws.send_str(json.dumps(frame(Op.SUBSCRIBED, id=sub["id"])))
        for event in EVENTS:
            await ws.send_str(json.dumps(frame(Op.EVENT, event=event.to_wire(), sub=sub["id"])))
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.abort()
        return ws

    async with _serving({"/ws": handler}) as url:
        yield lambda: url


@pytest.mark.parametrize(
    ("reconnect", "said"),
    [(False, "connection to the gateway lost"), (True, "cannot reconnect: the gateway refused")],
)
async def test_a_subscription_ends_when_the_gateway_is_gone_for_good(
    gateway: Callable[[], str], reconnect: bool, said: str
) -> None:
    """Before: ``reconnect=False`` (and a reconnect refused 401) left the subscriber awaiting
    its next event forever (the reader had stopped; the 401 died in the reader task)."""
    received: list[Event] = []
    async with Client(gateway(), use_json=True, reconnect=reconnect, max_backoff=0.1) as client:
        with pytest.raises(ConnectionLostError, match=said):
            async with asyncio.timeout(5):
                async for event in client.subscribe():
                    received.append(event)
    assert received == EVENTS


async def test_a_resubscription_does_not_deliver_again_what_was_delivered() -> None:
    """A gateway that drops every connection after one live event: each reconnect starts with
    the snapshot (the latest event of the topic, the one the client already has). Before, the
    subscriber got it twice per reconnect (E1 E2 E2 E3 E3 E4); now each event once."""
    events = [
        Event("SummitBuffer", "summaryState", seq, 1.0e9 + seq, {"seq": seq}) for seq in range(1, 5)
    ]
    connections = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        connections += 1
        latest, live = events[connections - 1], events[connections]
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL_JSON,))
        await ws.prepare(request)
        sub = json.loads((await ws.receive()).data)
        await ws.send_str(json.dumps(frame(Op.SUBSCRIBED, id=sub["id"])))
        snapshot = frame(Op.EVENT, event=latest.to_wire(), snapshot=True, sub=sub["id"])
        await ws.send_str(json.dumps(snapshot))
        await ws.send_str(json.dumps(frame(Op.EVENT, event=live.to_wire())))
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.abort()
        return ws

    received: list[Event] = []
    async with (
        _serving({"/ws": handler}) as url,
        Client(url, use_json=True, max_backoff=0.1) as client,
    ):
        async with asyncio.timeout(5):
            async for event in client.subscribe():
                received.append(event)
                if connections == 3 and event == events[3]:
                    break
        assert client.gaps.missing == 0
    assert [e.seq for e in received] == [1, 2, 3, 4]


async def test_a_gateway_that_does_not_answer_is_a_connection_error_in_bounded_time() -> None:
    """A gateway that accepts and then says nothing (stopped, its loop stuck, or something
    else on that port). Before: the subscription's wait was a bare TimeoutError (a traceback
    from ``dmcs events``), ``status()`` waited aiohttp's 300 s, and a TCP server that never
    answered the WebSocket handshake held the connect as long."""

    async def silent_ws(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL_JSON,))
        await ws.prepare(request)
        await asyncio.sleep(60)
        return ws

    async def silent_http(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        raise web.HTTPServiceUnavailable()

    mute = await asyncio.start_server(lambda r, w: asyncio.sleep(60), "127.0.0.1", 0)
    try:
        async with (
            _serving({"/ws": silent_ws, "/api/v1/status": silent_http}) as url,
            asyncio.timeout(5),
            Client(url, use_json=True, request_timeout=0.5) as client,
        ):
            with pytest.raises(ConnectionLostError, match="did not confirm the subscription"):
                await client.open_subscription(timeout=0.5)
            with pytest.raises(ConnectionLostError, match="did not answer /api/v1/status within"):
                await client.status()
        mute_url = f"ws://127.0.0.1:{mute.sockets[0].getsockname()[1]}/ws"
        with pytest.raises(ConnectionLostError, match="did not accept the connection within"):
            async with asyncio.timeout(5), Client(mute_url, request_timeout=0.5):
                pass
    finally:
        mute.close()
