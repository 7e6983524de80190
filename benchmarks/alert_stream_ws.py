"""The alert stream over real WebSockets on loopback: 100 filtered subscribers receive a visit's
CCD batches through the spool, the gateway's pump and the fan-out (used by benchmarks/alerts.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from base.alerts import AlertFanout
from base.alerts.batch import AlertBatch
from base.alerts.spool import AlertSpool, AlertStreamRpc
from commands.alert_stream import setup_alert_routes
from commands.auth import Authenticator
from state.peers import LocalPeers


class _Publisher(AlertStreamRpc):
    def __init__(self) -> None:
        self.spool = AlertSpool(max_batches=1000)


async def _receive(ws: aiohttp.ClientWebSocketResponse, n: int, t0: float) -> float:
    got = 0
    while got < n:
        msg = await ws.receive(timeout=120)
        if msg.type == aiohttp.WSMsgType.BINARY:
            got += 1
        elif msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"stream ended: {msg}")
    return time.perf_counter() - t0


async def stream_visit(
    visit: int, batches: list[tuple[int, AlertBatch, dict]], expressions: list[str],
    expected: list[int],
) -> dict[str, Any]:  # fmt: skip
    """Seconds until the last subscriber has its alerts of ``visit``; the publish cost."""
    publisher = _Publisher()
    app = web.Application()
    peer = LocalPeers({"AlertPublisher": publisher})("AlertPublisher")
    setup_alert_routes(app, Authenticator({"t": "user"}), peer, fanout=AlertFanout(queue_size=100))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/alerts/v1/stream"
    session = aiohttp.ClientSession(
        headers={"Authorization": "Bearer t"}, connector=aiohttp.TCPConnector(limit=0)
    )
    try:
        subs = []
        for expr in expressions:
            ws = await session.ws_connect(url)
            await ws.send_str(json.dumps({"v": 1, "op": "subscribe", "expression": expr}))
            assert json.loads((await ws.receive(timeout=10)).data)["op"] == "subscribed"
            subs.append(ws)
        await asyncio.sleep(0.5)  # the pump's first poll
        t0 = time.perf_counter()
        receivers = [
            asyncio.create_task(_receive(ws, n, t0)) for ws, n in zip(subs, expected, strict=True)
        ]
        publish_s = 0.0
        for det, batch, table in batches:  # one CCD at a time, as the publisher would
            t = time.perf_counter()
            publisher.spool.publish(visit, det, batch.ids, batch, table)
            publish_s += time.perf_counter() - t
            await asyncio.sleep(0)
        done = await asyncio.gather(*receivers)
        for ws in subs:
            await ws.close()
    finally:
        await session.close()
        await runner.cleanup()
    return {
        "subscribers": len(expressions), "ccd_batches": len(batches),
        "seconds_until_last_has_its_20": max(done), "median_s": sorted(done)[len(done) // 2],
        "publisher_side_publish_s": publish_s,
        "note": "server and 100 clients in one process on loopback, wall time under contention",
    }  # fmt: skip
