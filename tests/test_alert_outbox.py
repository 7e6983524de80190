"""The transactional outbox APDB → alerts: exactly one alert per stored DIASource, whatever dies.

The outbox row is written in the APDB store's transaction (a store that rolls back leaves no
row); AlertPublisher drains it and marks it done only after archiving. Association and
AlertPublisher are each SIGKILLed (Ray restarts them in STANDBY) inside the hand-off window,
and every CCD stored still has exactly its DIASources as archived alerts.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from base.apdb import Apdb
from base.apdb import outbox as ob
from base.apdb.simulate import dia_objects_from_sources
from base.prompt import alert_publisher
from base.prompt.alert_publisher import AlertPublisher
from commands.client import Client
from commands.server import RunningSystem
from state.errors import InvalidInputError, StorageError
from state.events import Event
from state.states import State
from tests.conftest import TOKENS, component_spec
from tests.standard import until, until_row, wait_for_event
from tests.test_prompt_components import ASSOCIATION, PUBLISHER, VISIT, ccd_wire

FITS = b"SIMPLE  =                    T" + bytes(50)


def handoff(n: int = 4) -> dict[str, Any]:
    sources = dict(ccd_wire(n=n)["sources"])
    sources["diaObjectId"] = sources["diaSourceId"].copy()
    sources["band"] = np.array(["r"] * (n - 1) + [None], dtype=object)
    return {
        "visit": VISIT,
        "detector": 3,
        "dayObs": 20261121,
        "band": "r",
        "sources": sources,
        "objects": dia_objects_from_sources(sources, 60800.2),
        "history": None,
        "forcedHistory": {"diaObjectId": np.zeros(0, dtype=np.int64)},
        "ssSources": None,
        "cutouts": [(FITS, None, FITS + b"t")] * (n - 1) + [(None, None, None)],
        "stages": {"endReadout": 1.0e9, "associated": 1.0e9 + 5},
    }


def test_payload_round_trip_keeps_columns_cutouts_and_nones() -> None:
    original = handoff()
    meta, payload = ob.encode(original)
    back = ob.decode(meta, payload)
    assert back["stages"] == original["stages"] and back["dayObs"] == 20261121
    assert back["history"] is None and back["ssSources"] is None
    for group in ("sources", "objects", "forcedHistory"):
        assert set(back[group]) == set(original[group])
        for name, values in original[group].items():
            a, b = back[group][name], np.asarray(values)
            same = a.tolist() == b.tolist() if b.dtype == object else np.array_equal(a, b, True)
            assert same, (group, name)
            assert back[group][name].dtype == np.asarray(values).dtype, (group, name)
    assert back["sources"]["band"].tolist() == ["r", "r", "r", None]
    assert back["cutouts"] == original["cutouts"]


def test_an_unreadable_payload_is_a_clear_error() -> None:
    meta, payload = ob.encode(handoff())
    with pytest.raises(InvalidInputError, match="unreadable alert outbox row"):
        ob.decode(meta, payload[: len(payload) // 2])
    with pytest.raises(InvalidInputError, match="the payload is gone"):
        ob.decode(meta, None)


def test_a_row_in_the_earlier_npz_payload_is_still_read() -> None:
    original = handoff()
    meta, payload = ob.encode(original)
    assert payload.startswith(ob.MAGIC)
    buf = io.BytesIO()
    np.savez(buf, **ob._unpack(payload))
    back, npz = ob.decode(meta, payload), ob.decode(meta, buf.getvalue())
    assert back["cutouts"] == npz["cutouts"] == original["cutouts"]
    for group in ("sources", "objects", "forcedHistory"):
        for name, a in back[group].items():
            b = npz[group][name]
            assert a.dtype == b.dtype and str(a.tolist()) == str(b.tolist()), (group, name)


async def outbox_rows(dsn: str, schema: str) -> dict[tuple[int, int], dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT * FROM "{schema}".alert_outbox')
    finally:
        await conn.close()
    return {(r["visit"], r["detector"]): dict(r) for r in rows}


async def test_the_outbox_row_commits_with_the_store_or_not_at_all(pg_dsn: str) -> None:
    schema = "apdb_outbox_tx"
    apdb = await Apdb.connect(pg_dsn, schema)
    try:
        h = handoff()
        stored = await apdb.store(VISIT, 3, h["sources"], h["objects"], handoff=lambda: h)
        assert stored.stored
        again = await apdb.store(VISIT, 3, h["sources"], h["objects"], handoff=lambda: h)
        assert not again.stored, "a repeat stores nothing and owes no second batch of alerts"
        earlier = await apdb.earlier_store(VISIT, 3)
        stages = {"associated": 1.0e9 + 5, "apdbStored": stored.stored_tai}  # at its commit
        assert earlier == {"nDiaSources": 4, "stages": stages}
        assert await apdb.earlier_store(VISIT, 99) == {}
        # The same diaSourceIds under another detector: the COPY fails after the outbox row.
        with pytest.raises(StorageError, match="UniqueViolation"):
            await apdb.store(VISIT, 4, h["sources"], h["objects"], handoff=lambda: h)
        assert not await apdb.is_stored(VISIT, 4)
    finally:
        await apdb.close()
    rows = await outbox_rows(pg_dsn, schema)
    assert list(rows) == [(VISIT, 3)], "the failed store left no outbox row"
    assert rows[(VISIT, 3)]["published_at"] is None


async def test_publisher_drains_the_outbox_and_sets_aside_an_unreadable_row(
    tmp_path: Path, pg_dsn: str
) -> None:
    schema = "apdb_outbox_drain"
    apdb = await Apdb.connect(pg_dsn, schema)
    good = handoff()
    try:
        await apdb.store(VISIT, 3, good["sources"], good["objects"], handoff=lambda: good)
    finally:
        await apdb.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".alert_outbox (visit, detector, meta, payload)'
            " VALUES ($1, 7, $2::jsonb, $3)",
            VISIT,
            ob.encode(good)[0],
            b"not an npz",
        )
    finally:
        await conn.close()
    events: list[Event] = []
    settings = {
        "dsn": pg_dsn,
        "apdb_schema": schema,
        "archive_schema": "alerts_outbox_drain",
        "records_schema": "pr_outbox_drain",
        "outbox_poll": 0.2,
    }
    publisher = AlertPublisher(
        "AlertPublisher", sink=events.append, settings=settings, data_dir=tmp_path
    )
    await publisher.start()
    try:
        await publisher.do_start()
        assert (await outbox_rows(pg_dsn, schema))[(VISIT, 3)]["published_at"] is None, (
            "nothing is drained before ENABLED"
        )
        await publisher.do_enable()
        rows = await until(lambda: _settled(pg_dsn, schema), timeout=20)
        assert rows[(VISIT, 3)]["n_alerts"] == 4 and rows[(VISIT, 3)]["payload"] is None
        assert "unreadable alert outbox row" in rows[(VISIT, 7)]["failure"]
        assert publisher.counts["unpublishable"] == 1
        logged = [e.data["message"] for e in events if e.topic == "logMessage"]
        assert any("visit" in m and "detector 7 cannot be published" in m for m in logged)
        for i in good["sources"]["diaSourceId"].tolist():
            assert await publisher.rpc_fetch_alert(i) is not None
        assert await publisher.drain() == 0, "a drained outbox publishes nothing again"
    finally:
        await publisher.close()


async def _publisher_on_one_row(
    tmp_path: Path, dsn: str, tag: str, events: list[Event]
) -> AlertPublisher:
    """An ENABLED publisher over an outbox of one stored CCD (not yet drained)."""
    apdb = await Apdb.connect(dsn, f"apdb_{tag}")
    good = handoff()
    try:
        await apdb.store(VISIT, 3, good["sources"], good["objects"], handoff=lambda: good)
    finally:
        await apdb.close()
    settings = {"dsn": dsn, "apdb_schema": f"apdb_{tag}", "archive_schema": f"alerts_{tag}",
                "records_schema": f"pr_{tag}", "outbox_poll": 0.2}  # fmt: skip
    publisher = AlertPublisher("AlertPublisher", sink=events.append, settings=settings,
                               data_dir=tmp_path)  # fmt: skip
    await publisher.start()
    await publisher.do_start()
    return publisher


def _hold_marking(publisher: AlertPublisher) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the drain between archiving a row's alerts and marking the row done: (reached,
    release)."""
    box = publisher._outbox
    assert box is not None
    reached, release, mark = asyncio.Event(), asyncio.Event(), box.done

    async def held(visit: int, detector: int, n_alerts: int) -> None:
        reached.set()
        await release.wait()
        await mark(visit, detector, n_alerts)

    box.done = held  # type: ignore[method-assign]
    return reached, release


async def test_standby_waits_for_the_drain_in_flight_before_closing_the_pool(
    tmp_path: Path, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Disabled and sent to STANDBY mid-row, the publisher lets the drain mark its row before
    the pool closes: no "pool is closing" failure, no retry, the row not published twice."""
    events: list[Event] = []
    publisher = await _publisher_on_one_row(tmp_path, pg_dsn, "drain_stop", events)
    try:
        reached, release = _hold_marking(publisher)
        await publisher.do_enable()
        await asyncio.wait_for(reached.wait(), 20)
        await publisher.do_disable()
        standby = asyncio.create_task(publisher.do_standby())
        await asyncio.sleep(0.3)
        assert not standby.done(), "standby waits for the row in flight"
        release.set()
        await asyncio.wait_for(standby, 20)
        assert publisher.summary_state == State.STANDBY
    finally:
        await publisher.close()
    row = (await outbox_rows(pg_dsn, "apdb_drain_stop"))[(VISIT, 3)]
    assert row["published_at"] is not None and row["n_alerts"] == 4
    assert not [r for r in caplog.records if "not drained" in r.getMessage()]


async def test_standby_cancels_a_drain_that_does_not_stop(
    tmp_path: Path, pg_dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain stuck on its row is cancelled after the bound; the row stays owed and the next
    ENABLED publisher drains it, once."""
    monkeypatch.setattr(alert_publisher, "DRAIN_STOP_WAIT_S", 0.3)
    events: list[Event] = []
    publisher = await _publisher_on_one_row(tmp_path, pg_dsn, "drain_cancel", events)
    try:
        reached, _ = _hold_marking(publisher)
        await publisher.do_enable()
        await asyncio.wait_for(reached.wait(), 20)
        await publisher.do_disable()
        await asyncio.wait_for(publisher.do_standby(), 10)
        assert (await outbox_rows(pg_dsn, "apdb_drain_cancel"))[(VISIT, 3)]["published_at"] is None
        await publisher.do_start()
        await publisher.do_enable()
        rows = await until(lambda: _settled(pg_dsn, "apdb_drain_cancel"), timeout=20)
        assert rows[(VISIT, 3)]["n_alerts"] == 4, "archived before, so marked as a duplicate"
        assert publisher.counts["duplicates"] == 1 and publisher.counts["published"] == 1
    finally:
        await publisher.close()
    assert not [r for r in caplog.records if "not drained now" in r.getMessage()]
    assert [r for r in caplog.records if "did not stop" in r.getMessage()]


async def _settled(dsn: str, schema: str) -> dict | None:
    rows = await outbox_rows(dsn, schema)
    pending = [k for k, r in rows.items() if r["published_at"] is None and r["failure"] is None]
    return None if pending else rows


# ---------------------------------------------------------------- killed on real Ray
def kill(running: RunningSystem, name: str) -> Any:
    async def go() -> None:
        os.kill(await running.system.handle(name).pid.remote(), signal.SIGKILL)

    return go()


async def restarted(events: Any, name: str) -> None:
    await wait_for_event(
        events,
        lambda e: (
            e.component == name and e.topic == "summaryState" and e.data.get("restartCount", 0) >= 1
        ),
        60,
    )


async def alerts_match_sources(dsn: str, apdb: str, alerts: str, ccds: int) -> None:
    """Per CCD, the archived alerts are exactly the stored DIASources, each once."""
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetch(
            f'SELECT "diaSourceId" AS id, visit, detector FROM "{apdb}"."DiaSource"'
        )
        archived = await conn.fetch(
            f'SELECT "diaSourceId" AS id, visit, detector FROM "{alerts}".alert_archive_index'
        )
        batches = await conn.fetch(f'SELECT n_alerts FROM "{alerts}".alert_archive_batch')
        pending = await conn.fetchval(
            f'SELECT count(*) FROM "{apdb}".alert_outbox WHERE published_at IS NULL'
        )
        marked = await conn.fetchval(f'SELECT sum(n_alerts) FROM "{apdb}".alert_outbox')
    finally:
        await conn.close()
    assert len({(r["visit"], r["detector"]) for r in stored}) == ccds
    assert sorted(tuple(r) for r in archived) == sorted(tuple(r) for r in stored)
    assert sum(b["n_alerts"] for b in batches) == len(stored) == len(archived)
    assert pending == 0
    assert marked == len(stored), "each row marked with its CCD's alerts, redelivered or not"


@pytest.fixture
async def outbox_system(system_factory: Any, pg_dsn: str, request: Any) -> RunningSystem:
    tag = request.node.name[-12:].replace("-", "_")
    return await system_factory(
        component_spec(
            "Association",
            ASSOCIATION,
            # threshold 0: every DIASource founds or matches an object and is alerted, so the
            # hand-off is checked against every stored DIASource (the cut: test_reliability.py)
            settings={
                "dsn": pg_dsn,
                "apdb_schema": f"apdb_{tag}",
                "alert_reliability_threshold": 0.0,
            },
        ),
        component_spec(
            "AlertPublisher",
            PUBLISHER,
            settings={
                "dsn": pg_dsn,
                "apdb_schema": f"apdb_{tag}",
                "archive_schema": f"alerts_{tag}",
                "records_schema": f"pr_{tag}",
                "outbox_poll": 0.5,
            },
        ),
    )


def tag_of(running: RunningSystem) -> str:
    return running.system.config.components[0].settings["apdb_schema"][5:]


COMPONENTS = ["Association", "AlertPublisher"]
TOPICS = ["summaryState", "alertsPublished"]


async def _store_while_not_publishing(ocs: Client, association: Any, ccds: int, **wire: Any) -> Any:
    """Subscribe, then store ``ccds`` CCDs while AlertPublisher is DISABLED (alerts owed)."""
    events = await ocs.open_subscription(COMPONENTS, TOPICS, snapshot=False)
    await ocs.set_state("Association", State.ENABLED)
    await ocs.set_state("AlertPublisher", State.DISABLED)
    for detector in range(ccds):
        reply = await association.rpc.remote("associate", ccd_wire(detector=detector, **wire))
        assert reply["stored"]
    return events


async def test_association_killed_with_alerts_owed_loses_none(
    outbox_system: RunningSystem, pg_dsn: str
) -> None:
    """Stored, then Association killed while the publisher is not taking alerts."""
    running, tag = outbox_system, tag_of(outbox_system)
    association = running.system.handle("Association")
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        events = await _store_while_not_publishing(ocs, association, ccds=4)
        await kill(running, "Association")
        await restarted(events, "Association")
        await ocs.set_state("AlertPublisher", State.ENABLED)
        published: set[int] = set()
        await wait_for_event(
            events,
            lambda e: e.topic == "alertsPublished" and published.add(e.data["detector"]) is None
            and len(published) == 4,
            60,
        )  # fmt: skip
        await ocs.set_state("Association", State.ENABLED)
        reply = await association.rpc.remote("associate", ccd_wire(detector=4))
        assert reply["stored"], "the restarted Association stores the next CCD"
        await wait_for_event(
            events, lambda e: e.topic == "alertsPublished" and e.data["detector"] == 4, 60
        )
        await until(lambda: _settled(pg_dsn, f"apdb_{tag}"), timeout=30)  # marked after
        await events.aclose()
    await alerts_match_sources(pg_dsn, f"apdb_{tag}", f"alerts_{tag}", 5)


async def test_publisher_killed_while_draining_loses_and_repeats_none(
    outbox_system: RunningSystem, pg_dsn: str
) -> None:
    """The publisher killed while draining: some CCDs marked, the last archived or not but
    certainly unmarked (a transaction of the test's holds its outbox row, so marking it waits;
    without it a quick drain could mark every row before the kill lands)."""
    running, tag = outbox_system, tag_of(outbox_system)
    association = running.system.handle("Association")
    box = f'"apdb_{tag}".alert_outbox'
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        events = await _store_while_not_publishing(ocs, association, ccds=10, n=100)
        holder = await asyncpg.connect(pg_dsn)
        try:
            hold = holder.transaction()
            await hold.start()
            await holder.execute(f"SELECT 1 FROM {box} WHERE detector = 9 FOR UPDATE")
            await ocs.set_state("AlertPublisher", State.ENABLED)
            # Polled in PostgreSQL: alertsPublished rides with the publisher's next send.
            await until_row(pg_dsn, f"SELECT count(*) FROM {box} WHERE published_at IS NOT NULL")
            await kill(running, "AlertPublisher")
            await restarted(events, "AlertPublisher")
            mid = await outbox_rows(pg_dsn, f"apdb_{tag}")
            owed = [k for k, r in mid.items() if r["published_at"] is None]
            assert (VISIT, 9) in owed, "the kill left the held CCD's alerts owed"
            await hold.rollback()
        finally:
            await holder.close()
        await ocs.set_state("AlertPublisher", State.ENABLED)
        await until(lambda: _settled(pg_dsn, f"apdb_{tag}"), timeout=60)
        await events.aclose()
    await alerts_match_sources(pg_dsn, f"apdb_{tag}", f"alerts_{tag}", 10)
