"""The Python client when the gateway goes away: a subscription ends with ConnectionLostError
once its events are read, never waits forever for a gateway the client no longer talks to.

The gateway here is a minimal aiohttp WebSocket server speaking the real frames
(``commands.protocol``): what is under test is the client's side of a lost connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

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

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield lambda: f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    await runner.cleanup()


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
