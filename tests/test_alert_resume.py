"""Resuming the alert stream from a batch position: a subscriber that was away gets, from the
archive (PostgreSQL ledger + Avro files), exactly the batches it missed, then the live ones;
filtered resumes match a subscriber that never left; bad positions are clear errors; a resume
while CCDs are being published neither loses nor doubles a batch at the replay/live seam; the
Python client and the CLI resume by themselves.

The publishing side is the AlertPublisher's own: archive the CCD (its position), then spool it
with that position, as ``AlertPublisher._publish`` does; the gateway is ``setup_alert_routes``
on loopback, talking to the publisher's ``AlertStreamRpc`` methods.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from click.testing import CliRunner

import commands.alert_feed as alert_feed
import commands.alert_stream as alert_stream
from base.alerts import AlertArchive, AlertFanout, alert_table, compile_filter, decode, predefined
from base.alerts.avro_columnar import encode_alert_batch
from base.alerts.filters import decoded_table
from base.alerts.packet import alert_id
from base.alerts.spool import AlertSpool, AlertStreamRpc
from base.apdb import IdPacker
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from commands.alert_client import AlertSubscription
from commands.alert_stream import setup_alert_routes
from commands.auth import Authenticator
from commands.cli import main as cli
from state.errors import StorageError
from state.peers import LocalPeers

TOKENS = {"broker-token": "broker", "user-token": "scientist"}
BROKER = {"Authorization": "Bearer broker-token"}
USER = {"Authorization": "Bearer user-token"}
NIGHT = 20261207
PER_CCD = 40
EXPRESSION = "diaSource.snr > 8 and diaSource.band == 'r'"


class Publisher(AlertStreamRpc):
    """The AlertPublisher's publishing order: archive (the position), then spool."""

    def __init__(self, archive: AlertArchive | None) -> None:
        self.spool = AlertSpool(max_batches=256)
        self.alert_archive = archive
        self.rng = np.random.default_rng(5)
        self.ids: dict[int, list[int]] = {}  # position -> diaSourceIds, as published

    async def publish_ccd(
        self, visit: int, detector: int, pause: float = 0.0, n: int = PER_CCD
    ) -> int:
        ra, dec = random_sky(self.rng, n, 30.0 + detector * 0.3, -20.0, 0.1)
        src = dia_sources(self.rng, ra, dec, visit, detector, 60950.0, packer=IdPacker(4))
        src["band"][::2] = "g"
        src["diaObjectId"] = src["diaSourceId"].copy()
        objects = dia_objects_from_sources(src, 60950.0)
        objects["nDiaSources"][::3] = 2
        batch = encode_alert_batch(src, objects)
        assert self.alert_archive is not None
        position = await self.alert_archive.archive(
            NIGHT, visit, detector, batch.ids.tolist(), batch.packets()
        )
        assert position is not None
        await asyncio.sleep(pause)  # the window between the archive's commit and the spool
        self.spool.publish(visit, detector, batch.ids, batch, alert_table(src, objects), position)
        self.ids[position] = batch.ids.tolist()
        return position

    async def publish_visit(self, visit: int, n_ccds: int = 3) -> list[int]:
        return [await self.publish_ccd(visit, det) for det in range(n_ccds)]


@dataclass
class Gateway:
    publisher: Any
    ws: str
    runner: web.AppRunner
    port: int
    stream: alert_feed.AlertStream

    @property
    def cli_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


async def start_gateway(
    publisher: AlertStreamRpc, port: int = 0, full_queue: int = 200_000
) -> Gateway:
    app = web.Application()
    peer = LocalPeers({"AlertPublisher": publisher})("AlertPublisher")
    fanout = AlertFanout(
        queue_size=200, per_visit_limit=20, max_drops=1000, full_stream_queue_size=full_queue
    )
    stream = setup_alert_routes(app, Authenticator(TOKENS), peer, fanout=fanout)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    port = runner.addresses[0][1]
    return Gateway(publisher, f"ws://127.0.0.1:{port}/alerts/v1/stream", runner, port, stream)


@pytest_asyncio.fixture(loop_scope="session")
async def archive(pg_dsn: str, tmp_path: Path) -> AsyncIterator[AlertArchive]:
    """An archive of its own (schema and files) per test: positions start at 1."""
    schema = f"alerts_resume_{uuid.uuid4().hex[:10]}"
    arch = await AlertArchive.open(pg_dsn, tmp_path / "archive", schema=schema)
    yield arch
    await arch.close()


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(archive: AlertArchive) -> AsyncIterator[Gateway]:
    gw = await start_gateway(Publisher(archive))
    yield gw
    await gw.runner.cleanup()


@dataclass
class Received:
    ids: list[int] = field(default_factory=list)
    marks: list[dict] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)


async def subscribe(
    session: aiohttp.ClientSession, url: str, **request: object
) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    ws = await session.ws_connect(url)
    await ws.send_str(json.dumps({"v": 1, "op": "subscribe", **request}))
    return ws, json.loads((await ws.receive(timeout=10)).data)


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse, last_position: int, got: Received | None = None
) -> Received:
    """Alerts and batch frames until the batch frame of ``last_position``."""
    got = got or Received()
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type == aiohttp.WSMsgType.BINARY:
            got.ids.append(decode(msg.data)["diaSourceId"])
            got.packets.append(msg.data)
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        assert frame["op"] == "batch", frame
        got.marks.append(frame)
        if frame["position"] >= last_position:
            return got


async def archived_ids(archive: AlertArchive, pg_dsn: str, positions: list[int]) -> list[int]:
    """What PostgreSQL's ledger and index say those batches hold, in stream (file) order."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            f'SELECT i."diaSourceId" FROM "{archive.schema}".alert_archive_index i JOIN'
            f' "{archive.schema}".alert_archive_batch b USING (visit, detector)'
            " WHERE b.position = ANY($1::bigint[]) ORDER BY b.position, i.byte_offset",
            positions,
        )
    finally:
        await conn.close()
    return [int(r[0]) for r in rows]


async def test_a_broker_resumes_with_exactly_the_batches_it_missed(
    gateway: Gateway, archive: AlertArchive, pg_dsn: str
) -> None:
    pub = gateway.publisher
    async with aiohttp.ClientSession(headers=BROKER) as session:
        ws, answer = await subscribe(session, gateway.ws, full=True, positions=True)
        assert answer["op"] == "subscribed" and answer["position"] == 0
        first = await pub.publish_visit(101)
        got = await receive_until(ws, first[-1])
        assert [m["position"] for m in got.marks] == first
        assert [m["alerts"] for m in got.marks] == [PER_CCD] * 3
        assert got.ids == [i for p in first for i in pub.ids[p]]
        await ws.close()
        # Away: two visits are published and archived.
        missed = await pub.publish_visit(102) + await pub.publish_visit(103)
        ws, answer = await subscribe(session, gateway.ws, full=True, **{"from": first[-1]})
        assert answer["op"] == "subscribed", answer
        assert answer["position"] == first[-1] and answer["newest"] == missed[-1]
        replayed = await receive_until(ws, missed[-1])
        assert [m["position"] for m in replayed.marks] == missed
        # exactly the missed alerts, each once, as the archive (PostgreSQL + Avro) holds them
        want = await archived_ids(archive, pg_dsn, missed)
        assert replayed.ids == want == [i for p in missed for i in pub.ids[p]]
        assert replayed.packets == [bytes(await archive.fetch_packet(i)) for i in replayed.ids]
        assert len(set(replayed.ids)) == len(replayed.ids) == 6 * PER_CCD
        # then live, from the fan-out
        live = await pub.publish_visit(104, n_ccds=2)
        after = await receive_until(ws, live[-1])
        assert [m["position"] for m in after.marks] == live
        assert after.ids == [i for p in live for i in pub.ids[p]]
        with pytest.raises(TimeoutError):  # nothing more, nothing twice
            await ws.receive(timeout=0.3)
        await ws.close()
    # A subscriber that does not ask for positions sees the stream exactly as before.
    async with aiohttp.ClientSession(headers=BROKER) as session:
        ws, answer = await subscribe(session, gateway.ws, full=True)
        assert "position" not in answer
        await pub.publish_ccd(105, 0)
        for _ in range(PER_CCD):
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY
        with pytest.raises(TimeoutError):
            await ws.receive(timeout=0.3)
        await ws.close()


async def test_filtered_resumes_get_what_a_subscriber_that_stayed_got(gateway: Gateway) -> None:
    pub = gateway.publisher
    filters = {"expression": EXPRESSION, "filter": "new_objects"}
    async with aiohttp.ClientSession(headers=USER) as session:
        stayed = {
            k: (await subscribe(session, gateway.ws, **{k: v}))[0] for k, v in filters.items()
        }
        leaving = {}
        for k, v in filters.items():
            leaving[k], answer = await subscribe(session, gateway.ws, positions=True, **{k: v})
            assert answer["op"] == "subscribed" and answer["perVisitLimit"] == 20
        # they leave in the middle of visit 202: its first CCD received, two more to come
        first = await pub.publish_visit(201) + [await pub.publish_ccd(202, 0)]
        got = {k: await receive_until(ws, first[-1]) for k, ws in leaving.items()}
        for ws in leaving.values():
            await ws.close()
        missed = [await pub.publish_ccd(202, det) for det in (1, 2)]
        missed += await pub.publish_visit(203)
        resumed = {}
        for k, v in filters.items():
            resumed[k], answer = await subscribe(session, gateway.ws, **{k: v, "from": first[-1]})
            assert answer["op"] == "subscribed"
            await receive_until(resumed[k], missed[-1], got[k])
        live = await pub.publish_visit(204)
        for k, ws in resumed.items():
            await receive_until(ws, live[-1], got[k])
        for k, expression in (("expression", EXPRESSION), ("filter", "new_objects")):
            f = predefined(expression) if k == "filter" else compile_filter(expression)
            n_stayed = len(got[k].ids)
            stayed_ids = [decode(p)["diaSourceId"] for p in await _collect(stayed[k], n_stayed)]
            # the same alerts in the same order: the filter and the 20-per-visit limit held
            # across the archive replay (visits 202, 203) and the live visits (201, 204), and
            # across the resume in the middle of visit 202
            assert got[k].ids == stayed_ids
            assert all(f.matches(decode(p)) for p in got[k].packets)
            per_visit = [decode(p)["diaSource"]["visit"] for p in got[k].packets]
            assert all(per_visit.count(v) <= 20 for v in (201, 202, 203, 204))
            assert [m["position"] for m in got[k].marks] == first + missed + live
        # the replayed visits had more passing alerts than the limit: the limit was exercised
        assert [decode(p)["diaSource"]["visit"] for p in got["expression"].packets].count(202) == 20
        for ws in [*stayed.values(), *resumed.values()]:
            await ws.close()


async def _collect(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[bytes]:
    out = []
    while len(out) < n:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        out.append(msg.data)
    return out


async def test_bad_resume_positions_are_clear_errors(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = gateway.publisher
    positions = await pub.publish_visit(301, n_ccds=2)
    async with aiohttp.ClientSession(headers=USER) as session:
        ws = await session.ws_connect(gateway.ws)
        for bad, why in (
            (-1, "non-negative integer"),
            ("3", "non-negative integer"),
            (1.5, "non-negative integer"),
            (True, "non-negative integer"),
            (2**63, "non-negative integer"),
            (positions[-1] + 1, f"ahead of the archive (newest position {positions[-1]})"),
        ):
            frame = {"v": 1, "op": "subscribe", "expression": EXPRESSION, "from": bad}
            await ws.send_str(json.dumps(frame))
            answer = json.loads((await ws.receive(timeout=5)).data)
            assert answer["op"] == "error" and answer["code"] == "bad_position", answer
            assert why in answer["message"]
        await ws.send_str(json.dumps({"v": 1, "op": "subscribe", "filter": "x", "positions": 1}))
        assert json.loads((await ws.receive(timeout=5)).data)["code"] == "bad_frame"
        await ws.send_str(json.dumps({"v": 1, "op": "ping", "id": 7}))
        assert json.loads((await ws.receive(timeout=5)).data) == {"v": 1, "op": "pong", "id": 7}
        # the connection still works: a good resume on it gets the second CCD
        frame = {"v": 1, "op": "subscribe", "full": False, "filter": "new_objects",
                 "from": positions[0]}  # fmt: skip
        await ws.send_str(json.dumps(frame))
        answer = json.loads((await ws.receive(timeout=5)).data)
        assert answer["op"] == "subscribed" and answer["oldest"] == 1
        got = await receive_until(ws, positions[-1])
        assert [m["position"] for m in got.marks] == positions[1:]
        # none of it: the first CCD (26 of 40 new objects) already gave this filter visit 301's
        # 20, counted at the resume although sent on another connection
        assert got.ids == [] and got.marks[0]["alerts"] == 0
        await ws.close()

    # An archive that fails in the middle of a replay: said so, and closed for a resume.
    async def failing_replay(*_: object) -> dict:
        raise StorageError("cannot read the alert archive /x: gone")

    monkeypatch.setattr(pub, "rpc_replay_alerts", failing_replay)
    async with aiohttp.ClientSession(headers=BROKER) as session:
        ws, answer = await subscribe(session, gateway.ws, full=True, **{"from": 0})
        assert answer["op"] == "subscribed"
        error = json.loads((await ws.receive(timeout=5)).data)
        assert error["code"] == "replay_failed" and "stopped after 0" in error["message"]
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == alert_stream.CLOSE_REPLAY_FAILED
    # A publisher without an archive: resuming is unavailable, said so.
    bare = await start_gateway(Publisher(None))
    try:
        async with aiohttp.ClientSession(headers=BROKER) as session:
            ws, answer = await subscribe(session, bare.ws, full=True, **{"from": 0})
            assert answer["code"] == "unavailable" and "no alert archive" in answer["message"]
            await ws.close()
    finally:
        await bare.runner.cleanup()


async def test_resume_while_ccds_are_published_loses_and_doubles_nothing(
    gateway: Gateway, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumes (the replay reading two batches at a time) start while a producer keeps
    archiving and spooling CCDs, with a random pause between the two as the publisher has:
    every resumed subscriber gets every batch after its position once, in order, across the
    replay/live seam."""
    monkeypatch.setattr(alert_feed, "REPLAY_BATCHES", 2)
    pub = gateway.publisher
    before = [await pub.publish_ccd(401, det) for det in range(6)]
    n_live = 24
    rng = random.Random(11)
    published: list[int] = []

    async def produce() -> None:
        for det in range(n_live):
            pause = rng.choice((0.0, rng.uniform(0.005, 0.03)))
            published.append(await pub.publish_ccd(402, det, pause=pause))
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def resume(session: aiohttp.ClientSession, delay: float, after: int) -> Received:
        await asyncio.sleep(delay)
        ws, answer = await subscribe(session, gateway.ws, full=True, **{"from": after})
        assert answer["op"] == "subscribed", answer
        got = Received()
        n_marks = sum(p > after for p in before) + n_live
        while len(got.marks) < n_marks:
            await receive_until(ws, 0, got)
        with pytest.raises(TimeoutError):  # nothing more
            await ws.receive(timeout=0.3)
        await ws.close()
        return got

    starts = [(0.04 * k, before[k % 6]) for k in range(1, 9)] + [(0.2, 0)]
    async with aiohttp.ClientSession(headers=BROKER) as session:
        results = await asyncio.gather(
            produce(), *(resume(session, delay, after) for delay, after in starts)
        )
    for (_, after), got in zip(starts, results[1:], strict=True):
        want = [p for p in before if p > after] + published
        assert [m["position"] for m in got.marks] == want
        assert got.ids == [i for p in want for i in pub.ids[p]]
        assert got.ids == await archived_ids(pub.alert_archive, pg_dsn, want)


async def test_a_batch_pumped_while_a_replay_read_is_in_flight_is_not_lost(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seam's other race, made to happen: the replay's read finds nothing new, but before
    its answer arrives a CCD is archived, spooled and offered to the fan-out (where the
    replaying subscriber is not yet offered anything). The replay must read again, not join
    the live stream after that batch."""
    pub = gateway.publisher
    first = await pub.publish_ccd(601, 0)
    late: list[int] = []
    offered, published = asyncio.Event(), asyncio.Event()
    replay, offer = pub.rpc_replay_alerts, gateway.stream.publish

    async def racing_replay(after: int, *args: object) -> dict:
        answer = await replay(after, *args)
        if not answer["batches"] and not late:
            late.append(await pub.publish_ccd(601, 1))
            published.set()
            await offered.wait()
        return answer

    def pumped(batch: dict) -> None:
        offer(batch)
        if batch["position"] in late:
            offered.set()

    monkeypatch.setattr(pub, "rpc_replay_alerts", racing_replay)
    monkeypatch.setattr(gateway.stream, "publish", pumped)
    async with aiohttp.ClientSession(headers=BROKER) as session:
        ws, answer = await subscribe(session, gateway.ws, full=True, **{"from": first})
        assert answer["op"] == "subscribed", answer
        await asyncio.wait_for(published.wait(), 10)
        got = await receive_until(ws, late[0])
        assert [m["position"] for m in got.marks] == late
        assert got.ids == pub.ids[late[0]]
        live = await pub.publish_ccd(601, 2)
        after = await receive_until(ws, live)
        assert [m["position"] for m in after.marks] == [live] and after.ids == pub.ids[live]
        await ws.close()


async def test_client_and_cli_resume_across_a_gateway_restart(gateway: Gateway) -> None:
    pub = gateway.publisher
    first = await pub.publish_visit(501, n_ccds=2)
    async with aiohttp.ClientSession(headers=BROKER) as session:
        alerts = AlertSubscription(session, gateway.ws, full=True, max_backoff=0.2)
        async with alerts:
            assert alerts.position == first[-1]  # live: starts after what is archived
            second = await pub.publish_visit(502, n_ccds=2)
            got = [alert_id(await anext(alerts)) for _ in range(PER_CCD + PER_CCD // 2)]
            # The gateway goes away halfway through a batch; CCDs are published meanwhile;
            # a new gateway comes up on the same port.
            await gateway.runner.cleanup()
            third = await pub.publish_visit(503, n_ccds=2)
            # the new gateway's publisher has no archive open for a while (still starting):
            # the client's resumes are answered 'unavailable' and it keeps trying
            archive, pub.alert_archive = pub.alert_archive, None
            restarted = await start_gateway(pub, gateway.port)
            gateway.runner = restarted.runner

            async def collect(n: int) -> None:
                while len(got) < n:
                    got.append(alert_id(await anext(alerts)))

            resumed = asyncio.ensure_future(collect(4 * PER_CCD))  # second and third
            await asyncio.sleep(0.5)
            assert not resumed.done()
            pub.alert_archive = archive
            await asyncio.wait_for(resumed, 10)
            fourth = [await pub.publish_ccd(504, 0)]
            while len(got) < 5 * PER_CCD:
                got.append(alert_id(await asyncio.wait_for(anext(alerts), 10)))
            assert got == [i for p in second + third + fourth for i in pub.ids[p]]
            # the last batch's frame follows its last alert: not read yet
            assert alerts.reconnects >= 1 and alerts.position == third[-1]
    # The CLI: --from replays from the archive (batch positions on stderr).
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, cli,
        ["alerts", "stream", "--full", "--from", str(second[-1]), "--count", str(3 * PER_CCD),
         "--url", gateway.cli_url, "--token", "broker-token"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith('{"dia')]
    assert [x["diaSourceId"] for x in lines] == [i for p in third + fourth for i in pub.ids[p]]
    marks = [json.loads(x) for x in result.stderr.splitlines() if '"op": "batch"' in x]
    assert [m["position"] for m in marks] == third  # the third batch's frame follows its last


def test_decoded_table_filters_as_the_hand_off_table() -> None:
    """The replay filters decoded archived alerts: the same masks as the live table."""
    rng = np.random.default_rng(3)
    ra, dec = random_sky(rng, 300, 10.0, 5.0, 0.1)
    src = dia_sources(rng, ra, dec, 7, 1, 60950.0, packer=IdPacker(4))
    src["band"][::3] = "g"
    src["diaObjectId"] = src["diaSourceId"].copy()
    src["diaObjectId"][::5] = 0  # no object (an ssSource-less orphan): nulls in the alert
    objects = dia_objects_from_sources(
        {k: v[src["diaObjectId"] != 0] for k, v in src.items()}, 60950.0
    )
    objects["nDiaSources"][::4] = 3
    batch = encode_alert_batch(src, objects)
    live = alert_table(src, objects)
    replay = decoded_table([decode(bytes(p)) for p in batch.packets()])
    names = ["all_bright", "new_objects", "high_reliability", "moving_objects", "brightening_r",
             "bright_point_sources"]  # fmt: skip
    filters = [predefined(n) for n in names] + [
        compile_filter(EXPRESSION),
        compile_filter("isnull(diaObject.diaObjectId) or diaObject.nDiaSources >= 3"),
        compile_filter("not isnull(diaSource.diaObjectId) and diaSource.band in ('g', 'i')"),
    ]
    for f in filters:
        want = f.mask(live, len(batch))
        assert np.array_equal(f.mask(replay, len(batch)), want), f.expression
    assert any(f.mask(live, len(batch)).any() for f in filters)


async def test_a_resumer_that_does_not_read_stalls_nobody(gateway: Gateway) -> None:
    """Two brokers resume from 0 over 14 MB of archived alerts and read nothing (a 4 kB
    receive buffer): their replays wait on their own sockets while a live subscriber gets a
    new CCD at once, and archive reads in the publisher go one at a time."""
    pub = gateway.publisher
    for det in range(8):
        await pub.publish_ccd(701, det, n=4000)
    reads = {"now": 0, "most": 0}
    replay = pub.alert_archive.batches_after

    async def counted(*args: object) -> list:
        reads["now"] += 1
        reads["most"] = max(reads["most"], reads["now"])
        try:
            await asyncio.sleep(0.01)
            return await replay(*args)
        finally:
            reads["now"] -= 1

    def small_buffer(addr: Any) -> socket.socket:
        sock = socket.socket(addr[0], addr[1], addr[2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return sock

    async with (
        aiohttp.ClientSession(
            headers=BROKER, connector=aiohttp.TCPConnector(socket_factory=small_buffer)
        ) as stuck_session,
        aiohttp.ClientSession(headers=USER) as session,
    ):
        stuck = [(await subscribe(stuck_session, gateway.ws, full=True, **{"from": 0}))[0]]
        stuck.append((await subscribe(stuck_session, gateway.ws, full=True, **{"from": 0}))[0])
        live, _ = await subscribe(session, gateway.ws, expression="diaSource.snr > 0",
                                  positions=True)  # fmt: skip
        pub.alert_archive.batches_after = counted
        await asyncio.sleep(1.0)  # the stuck replays fill their sockets
        t0 = time.perf_counter()
        position = await pub.publish_ccd(702, 0)
        got = await receive_until(live, position)
        assert got.ids and time.perf_counter() - t0 < 2.0
        async with session.get(gateway.ws.replace("ws://", "http://").replace(
            "/alerts/v1/stream", "/api/v1/alert-stream")) as r:  # fmt: skip
            status = await r.json()
        replaying = [s for s in status["subscribers"] if s["replaying"]]
        assert len(replaying) == 2, status["subscribers"]
        assert reads["most"] == 1
        for ws in [*stuck, live]:
            await ws.close()


async def test_a_client_whose_queue_overflowed_gets_the_dropped_alerts_from_the_archive(
    archive: AlertArchive,
) -> None:
    """A queue of 5 and CCDs of 40 alerts: the gateway drops most of each batch and says so;
    the client resumes from its last batch and gets every alert once, in order."""
    pub = Publisher(archive)
    gw = await start_gateway(pub, full_queue=5)
    try:
        async with (
            aiohttp.ClientSession(headers=BROKER) as session,
            AlertSubscription(session, gw.ws, full=True, max_backoff=0.2) as alerts,
        ):
            positions = await pub.publish_visit(801)
            got = [alert_id(await asyncio.wait_for(anext(alerts), 10)) for _ in range(3 * PER_CCD)]
            assert got == [i for p in positions for i in pub.ids[p]]
            assert alerts.dropped > 0 and alerts.reconnects >= 1
    finally:
        await gw.runner.cleanup()


async def test_the_alert_publisher_streams_positions_and_its_restart_goes_on(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The AlertPublisher component itself (no Ray): each published CCD reaches the stream
    with its archive position; a restarted publisher (and gateway) starts its live head after
    what is archived, and a subscriber resumes across the restart."""
    from base.prompt.alert_publisher import AlertPublisher
    from tests.test_prompt_components import VISIT, alert_handoff

    tag = uuid.uuid4().hex[:8]
    settings = {"dsn": pg_dsn, "apdb_schema": f"apdb_rs_{tag}",
                "archive_schema": f"alerts_rs_{tag}", "records_schema": f"pr_rs_{tag}"}  # fmt: skip

    async def started() -> AlertPublisher:
        publisher = AlertPublisher("AlertPublisher", sink=lambda _: None, settings=settings,
                                   data_dir=tmp_path)  # fmt: skip
        await publisher.start()
        await publisher.do_start()
        await publisher.do_enable()
        return publisher

    async def publish(publisher: AlertPublisher, detector: int) -> list[int]:
        handoff = alert_handoff(VISIT + 700, detector, n=6)
        assert (await publisher.rpc_publish(handoff))["published"] == 6
        return [int(i) for i in handoff["sources"]["diaSourceId"]]

    async def ledger() -> dict[int, int]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch(
                f"SELECT detector, position FROM alerts_rs_{tag}.alert_archive_batch"
            )
        finally:
            await conn.close()
        return {r["detector"]: r["position"] for r in rows}

    publisher = await started()
    gw = await start_gateway(publisher)
    try:
        async with aiohttp.ClientSession(headers=BROKER) as session:
            ws, answer = await subscribe(session, gw.ws, full=True, positions=True)
            assert answer["position"] == 0
            ids = {1: await publish(publisher, 1)}
            got = await receive_until(ws, 0)
            assert got.ids == ids[1] and got.marks[0]["position"] == (await ledger())[1]
            await ws.close()
            ids[2], ids[3] = await publish(publisher, 2), await publish(publisher, 3)
    finally:
        await gw.runner.cleanup()
        await publisher.close()
    positions = await ledger()
    publisher = await started()
    assert publisher.spool.position == positions[3]
    gw = await start_gateway(publisher)
    try:
        async with aiohttp.ClientSession(headers=BROKER) as session:
            ws, answer = await subscribe(session, gw.ws, full=True, positions=True)
            assert answer["position"] == positions[3], "live starts after the archive"
            await ws.close()
            ws, answer = await subscribe(session, gw.ws, full=True, **{"from": positions[1]})
            got = await receive_until(ws, positions[3])
            assert [m["position"] for m in got.marks] == [positions[2], positions[3]]
            ids[4] = await publish(publisher, 4)
            got = await receive_until(ws, 0, got)
            assert got.ids == ids[2] + ids[3] + ids[4]
            assert got.marks[-1]["position"] == (await ledger())[4]
            await ws.close()
    finally:
        await gw.runner.cleanup()
        await publisher.close()
