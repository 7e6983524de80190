"""The alert stream over real aiohttp on loopback: 100 filtered subscribers, a broker, a slow
subscriber, bad subscriptions, the archive over HTTP and the CLI; the publisher's spool."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from click.testing import CliRunner

from base.alerts import AlertArchive, AlertFanout, alert_table, compile_filter, decode, predefined
from base.alerts.filters import filter_table
from base.alerts.simulate import SimulatedCcd, cutout_template, simulated_ccd
from base.alerts.spool import AlertSpool, AlertStreamRpc
from commands.alert_stream import CLOSE_TOO_SLOW, setup_alert_routes
from commands.auth import Authenticator
from commands.cli import main as cli
from state.errors import InvalidInputError
from state.peers import LocalPeers

TOKENS = {"broker-token": "broker", "user-token": "scientist"}
N_CCD, PER_CCD, VISIT = 4, 250, 9001


class Publisher(AlertStreamRpc):
    """The publishing side exactly as the AlertPublisher component carries it."""

    def __init__(self, archive: AlertArchive | None = None) -> None:
        self.spool = AlertSpool(max_batches=64)
        self.alert_archive = archive


Ccd = SimulatedCcd


def make_ccds() -> list[Ccd]:
    rng = np.random.default_rng(17)
    template = cutout_template()
    return [
        simulated_ccd(rng, PER_CCD, VISIT, det, template, every_cutout=False, second_band="g")
        for det in range(N_CCD)
    ]


@pytest.fixture(scope="module")
def ccds() -> list[Ccd]:
    return make_ccds()


@pytest_asyncio.fixture(loop_scope="session")
async def archive(pg_dsn: str, tmp_path: Path) -> AsyncIterator[AlertArchive]:
    arch = await AlertArchive.open(pg_dsn, tmp_path / "archive", schema="alerts_test_stream")
    yield arch
    await arch.close()


@dataclass
class Server:
    publisher: Publisher
    base: str
    ws: str


@pytest_asyncio.fixture(loop_scope="session")
async def server(archive: AlertArchive) -> AsyncIterator[Server]:
    publisher = Publisher(archive)
    app = web.Application()
    peer = LocalPeers({"AlertPublisher": publisher})("AlertPublisher")
    fanout = AlertFanout(queue_size=100, per_visit_limit=20, max_drops=20,
                         full_stream_queue_size=1200)  # fmt: skip
    setup_alert_routes(app, Authenticator(TOKENS), peer, fanout=fanout)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Server(publisher, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/alerts/v1/stream")
    await runner.cleanup()


def _unlimited() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=0)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _subscribe(
    session: aiohttp.ClientSession, url: str, request: dict, **kwargs: object
) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    ws = await session.ws_connect(url, **kwargs)
    await ws.send_str(json.dumps({"v": 1, "op": "subscribe", **request}))
    answer = json.loads((await ws.receive(timeout=10)).data)
    return ws, answer


async def _collect(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < n:
        msg = await ws.receive(timeout=20)
        if msg.type == aiohttp.WSMsgType.BINARY:
            got.append(msg.data)
        elif msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"stream ended early: {msg}")
    return got


async def test_hundred_filtered_subscribers_broker_and_slow_one(
    server: Server, ccds: list[Ccd]
) -> None:
    n_all = N_CCD * PER_CCD
    tables = [alert_table(c.sources, c.objects) for c in ccds]
    table = filter_table({k: np.concatenate([t[k] for t in tables]) for k in tables[0]}, n_all)
    exprs = [f"diaSource.snr > {5 + i % 25} and diaSource.band == '{'gr'[i % 2]}'"
             for i in range(95)] + ["all_bright", "new_objects", "high_reliability",
                                    "bright_point_sources", "moving_objects"]  # fmt: skip
    filters = [predefined(e) if " " not in e else compile_filter(e) for e in exprs]
    expected = [min(20, int(f.mask(table, n_all).sum())) for f in filters]
    async with (  # no connection limit: 100 subscribers hold 100 connections
        aiohttp.ClientSession(headers=_auth("user-token"), connector=_unlimited()) as users,
        aiohttp.ClientSession(headers=_auth("broker-token")) as brokers,
    ):
        subs = []
        for e in exprs:
            key = "expression" if " " in e else "filter"
            ws, answer = await _subscribe(users, server.ws, {key: e})
            assert answer["op"] == "subscribed" and answer["perVisitLimit"] == 20
            subs.append(ws)
        broker, answer = await _subscribe(brokers, server.ws, {"full": True})
        assert answer["full"] and answer["perVisitLimit"] is None
        # A slow broker: a tiny receive buffer, and it never reads.
        slow, _ = await _subscribe(brokers, server.ws, {"full": True}, max_msg_size=0)
        t0 = time.perf_counter()
        for c in ccds:
            server.publisher.spool.publish(
                VISIT,
                c.detector,
                c.sources["diaSourceId"],
                c.batch,
                alert_table(c.sources, c.objects),
            )
        got = await asyncio.gather(
            *(_collect(ws, n) for ws, n in zip(subs, expected, strict=True)),
            _collect(broker, n_all),
        )
        elapsed = time.perf_counter() - t0
        for packets, f, n in zip(got[:-1], filters, expected, strict=True):
            alerts = [decode(p) for p in packets]
            assert len(alerts) == n and all(f.matches(a) for a in alerts)
        assert sorted(decode(p)["diaSourceId"] for p in got[-1]) == sorted(
            np.concatenate([c.sources["diaSourceId"] for c in ccds]).tolist()
        )
        assert elapsed < 30.0
        # Three more visits: the reading broker keeps up; the slow one overflows its queue (and
        # its socket buffers) and is closed as too slow; nobody waited for it.
        for visit in (VISIT + 1, VISIT + 2, VISIT + 3):
            for c in ccds:
                table = alert_table(c.sources, c.objects)
                server.publisher.spool.publish(visit, c.detector, c.sources["diaSourceId"],
                                               c.batch, table)  # fmt: skip
            assert len(await _collect(broker, n_all)) == n_all
        while (await slow.receive(timeout=20)).type not in (
            aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR,
        ):  # fmt: skip
            pass
        assert slow.close_code == CLOSE_TOO_SLOW
        async with users.get(f"{server.base}/api/v1/alert-stream") as response:
            status = await response.json()
        assert status["alerts"] == 4 * n_all and status["missedBatches"] == 0
        states = {s["name"]: s for s in status["subscribers"]}
        assert not any(s["lagging"] for s in states.values())  # the slow one is gone
        assert all(s["dropped"] == 0 for s in states.values())
        # Each filtered subscriber has its (up to) 20 of every further visit waiting.
        again = await _collect(subs[0], 3 * expected[0])
        assert len(again) == 3 * expected[0]
        for ws in [*subs, broker, slow]:
            await ws.close()


async def test_bad_subscriptions_get_clear_errors(server: Server) -> None:
    async with aiohttp.ClientSession(headers=_auth("user-token")) as session:
        ws, answer = await _subscribe(session, server.ws, {"expression": "diaSource.psfFlx > 3"})
        assert answer["op"] == "error" and answer["code"] == "bad_filter"
        assert "did you mean 'diaSource.psfFlux'" in answer["message"]
        await ws.send_str(json.dumps({"v": 1, "op": "subscribe", "filter": "nope"}))
        answer = json.loads((await ws.receive(timeout=5)).data)
        assert answer["code"] == "bad_filter" and "known: all_bright" in answer["message"]
        await ws.send_str(json.dumps({"v": 1, "op": "subscribe", "full": True}))
        answer = json.loads((await ws.receive(timeout=5)).data)
        assert answer["code"] == "not_permitted"
        await ws.send_str("{not json")
        assert json.loads((await ws.receive(timeout=5)).data)["code"] == "bad_frame"
        await ws.send_str(json.dumps({"v": 1, "op": "ping", "id": 3}))
        assert json.loads((await ws.receive(timeout=5)).data) == {"v": 1, "op": "pong", "id": 3}
        await ws.send_str(json.dumps({"v": 1, "op": "subscribe", "filter": "all_bright"}))
        assert json.loads((await ws.receive(timeout=5)).data)["op"] == "subscribed"
        await ws.send_str(json.dumps({"v": 1, "op": "subscribe", "filter": "all_bright"}))
        assert "already has" in json.loads((await ws.receive(timeout=5)).data)["message"]
        await ws.close()
    async with aiohttp.ClientSession() as anonymous:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await anonymous.ws_connect(server.ws)
        assert info.value.status == 401


async def test_archive_fetch_over_http_and_cli(
    server: Server, ccds: list[Ccd], archive: AlertArchive
) -> None:
    c = ccds[1]
    packets = c.batch.packets()
    assert await archive.archive(20261121, VISIT, c.detector, c.sources["diaSourceId"], packets)
    sid = int(c.sources["diaSourceId"][7])
    async with aiohttp.ClientSession(headers=_auth("user-token")) as session:
        async with session.get(f"{server.base}/api/v1/alerts/{sid}") as r:
            assert r.status == 200 and await r.read() == bytes(packets[7])
            assert r.headers["X-Alert-Schema-Id"] == "1101"
        async with session.get(f"{server.base}/api/v1/alerts/{sid}?format=json") as r:
            alert = await r.json()
            assert alert["diaSourceId"] == sid and alert["cutoutTemplate"] is None
            assert alert["cutoutScience"] is None
            assert isinstance(alert["cutoutDifference"], str)  # base64 FITS
        async with session.get(f"{server.base}/api/v1/alerts/12345") as r:
            assert r.status == 404
        async with session.get(f"{server.base}/api/v1/alerts/abc") as r:
            assert r.status == 400 and "must be an integer" in await r.text()
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(f"{server.base}/api/v1/alerts/{sid}") as r,
    ):
        assert r.status == 401
    url = server.ws.replace("/alerts/v1/stream", "/ws")
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, cli, ["alerts", "get", str(sid), "--url", url, "--token", "user-token"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["diaSourceId"] == sid
    result = await asyncio.to_thread(
        runner.invoke, cli, ["alerts", "get", "12345", "--url", url, "--token", "user-token"]
    )
    assert result.exit_code == 1 and "HTTP 404" in result.output

    async def publish_soon() -> None:
        await asyncio.sleep(1.0)
        server.publisher.spool.publish(VISIT + 5, 1, c.sources["diaSourceId"], c.batch,
                                       alert_table(c.sources, c.objects))  # fmt: skip

    task = asyncio.create_task(publish_soon())
    result = await asyncio.to_thread(
        runner.invoke, cli,
        ["alerts", "stream", "--expression", "diaSource.snr > 0", "--count", "3",
         "--url", url, "--token", "user-token"],
    )  # fmt: skip
    await task
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith('{"dia')]
    assert len(lines) == 3 and all(x["visit"] == VISIT for x in lines)


async def test_spool_is_bounded_and_reports_what_a_reader_missed() -> None:
    spool = AlertSpool(max_batches=3)
    ids = np.array([1, 2])
    packets = [b"\x00\x00\x00\x04\x4dab", b"\x00\x00\x00\x04\x4dcd"]
    table = {"diaSource.snr": np.array([1.0, 2.0])}
    start = await spool.poll(None)
    assert start == {"cursor": 0, "missed": 0, "reset": False, "batches": [], "position": 0}
    t0 = time.perf_counter()
    empty = await spool.poll(0, timeout=0.2)
    assert empty["batches"] == [] and time.perf_counter() - t0 >= 0.15
    waiter = asyncio.create_task(spool.poll(0, timeout=10))
    await asyncio.sleep(0.05)
    spool.publish(1, 0, ids, packets, table)
    got = await asyncio.wait_for(waiter, 2)
    assert got["cursor"] == 1 and bytes(got["batches"][0]["data"]) == b"".join(packets)
    for det in range(1, 6):
        spool.publish(1, det, ids, packets, table)
    late = await spool.poll(1, max_batches=2)
    assert late["missed"] == 2 and [b["seq"] for b in late["batches"]] == [4, 5]
    assert spool.evicted == 3
    restarted = await spool.poll(99)
    assert restarted["reset"] and [b["seq"] for b in restarted["batches"]] == [4, 5, 6]
    with pytest.raises(InvalidInputError, match="differ"):
        spool.publish(2, 0, ids, packets[:1], table)
    with pytest.raises(InvalidInputError, match="no alert archive"):
        await Publisher().rpc_fetch_alert(5)
