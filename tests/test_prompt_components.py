"""CcdProcessor, Association and AlertPublisher on real Ray with a real PostgreSQL.

The standard state-machine and bad-command tests for each, with each one's own FAULT:
Association on bad input, AlertPublisher on an archive it cannot write, CcdProcessor on a
corrupted durable work list. The hand-off Association → AlertPublisher: one alert per
DIASource, published once, however often the same CCD is offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from base.apdb.simulate import dia_objects_from_sources, dia_sources
from base.prompt.alert_publisher import ARCHIVE_FAILED, AlertPublisher
from base.prompt.ccd_processor import WORK_LIST_FAILED, CcdProcessor
from base.registry.products import register_night
from base.registry.repository import Repository
from commands.client import Client
from commands.server import RunningSystem
from state.clock import tai_now
from state.errors import InvalidInputError, NotReadyError, StorageError
from state.events import Event
from state.states import State
from tests.conftest import TOKENS, component_spec
from tests.standard import StandardComponentTests, until, wait_for_event

ASSOCIATION = "base.prompt.association:Association"
PUBLISHER = "base.prompt.alert_publisher:AlertPublisher"
PROCESSOR = "base.prompt.ccd_processor:CcdProcessor"
VISIT, DETECTOR, MJD = 2026112100007, 3, 60800.2


def ccd_wire(visit: int = VISIT, detector: int = DETECTOR, n: int = 25, **changes: Any) -> dict:
    where = np.random.default_rng(detector)  # the same sky positions in every visit
    rng = np.random.default_rng([visit % 1000, detector])
    ra0, dec0 = 150.0, 2.0
    ra = ra0 + where.uniform(-0.05, 0.05, n)
    dec = dec0 + where.uniform(-0.05, 0.05, n)
    sources = dia_sources(rng, ra, dec, visit, detector, MJD)
    wire = {
        "visit": visit,
        "detector": detector,
        "band": "r",
        "day_obs": 20261121,
        "midpoint_mjd": MJD,
        "footprint_ra": (ra0 - 0.06, ra0 + 0.06, ra0 + 0.06, ra0 - 0.06),
        "footprint_dec": (dec0 - 0.06, dec0 - 0.06, dec0 + 0.06, dec0 + 0.06),
        "sources": sources,
        "cutouts": [],
        "stages": {"endReadout": 1.0e9},
    }
    wire.update(changes)
    return wire


def alert_handoff(visit: int = VISIT, detector: int = DETECTOR, n: int = 5) -> dict:
    """What Association hands the publisher for one stored CCD (every source a new object)."""
    sources = dict(ccd_wire(visit, detector, n)["sources"])
    sources["diaObjectId"] = sources["diaSourceId"].copy()
    return {
        "visit": visit,
        "detector": detector,
        "dayObs": 20261121,
        "band": "r",
        "sources": sources,
        "objects": dia_objects_from_sources(sources, MJD),
        "stages": {"endReadout": tai_now()},
    }


def corrupt(path: Path) -> bytes:
    """Overwrite an SQLite file in place with garbage (checkpointed first); its bytes before."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    good = path.read_bytes()
    with path.open("r+b") as f:
        f.write(b"not a work list!" * (len(good) // 16))
    return good


def restore(path: Path, good: bytes) -> None:
    """Put a repaired copy in place, as an operator restores a file from its backup."""
    copy = path.with_name(path.name + ".restored")
    copy.write_bytes(good)
    os.replace(copy, path)


def nan_wire() -> dict:
    wire = ccd_wire(detector=9)
    wire["sources"] = {**wire["sources"], "ra": np.full(25, math.nan)}
    return wire


class TestAssociation(StandardComponentTests):
    component_class = ASSOCIATION
    name = "Association"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str) -> RunningSystem:
        type(self).settings = {"dsn": pg_dsn, "apdb_schema": "apdb_assoc_std"}
        return await system_factory(self.spec())

    async def _rename(self, table: str, to: str) -> None:
        conn = await asyncpg.connect(self.settings["dsn"])
        try:
            schema = self.settings["apdb_schema"]
            await conn.execute(f'ALTER TABLE {schema}."{table}" RENAME TO "{to}"')
        finally:
            await conn.close()

    async def cause_fault(self, running: RunningSystem, client: Client) -> None:
        """The APDB cannot be written (its DiaSource table gone): FAULT, nothing stored."""
        await self._rename("DiaSource", "DiaSource_away")

        async def send() -> None:
            await asyncio.sleep(1.0)
            with pytest.raises(StorageError, match="DiaSource"):
                await running.system.handle(self.name).rpc.remote("associate", ccd_wire(detector=7))

        self._sent = asyncio.get_running_loop().create_task(send())

    async def repair_fault(self, running: RunningSystem) -> None:
        await self._sent
        await self._rename("DiaSource_away", "DiaSource")

    async def test_malformed_results_are_refused_and_it_keeps_serving(
        self, running: RunningSystem, ocs: Client
    ) -> None:
        """One processor's bad payload is that CCD's error, never a FAULT for everyone."""
        handle = running.system.handle(self.name)
        await ocs.set_state(self.name, State.ENABLED)
        with pytest.raises(InvalidInputError, match="non-finite ra"):
            await handle.rpc.remote("associate", nan_wire())
        assert await ocs.get_state(self.name) == State.ENABLED
        reply = await handle.rpc.remote("associate", ccd_wire(detector=11))
        assert reply["stored"], "the next CCD is stored as usual"
        status = {s["name"]: s for s in await ocs.status()}
        assert status[self.name]["errorCode"] == 0
        await ocs.set_state(self.name, State.STANDBY)

    async def test_refuses_work_unless_enabled(self, running: RunningSystem, ocs: Client) -> None:
        with pytest.raises(NotReadyError, match="not ENABLED"):
            await running.system.handle(self.name).rpc.remote("associate", ccd_wire())


class TestAssociationPartition(TestAssociation):
    """A partition actor other than the first (``[association] partitions = 2``): the same
    component behaviour, its stores holding their region locks."""

    name = "Association1"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str) -> RunningSystem:
        type(self).settings = {
            "dsn": pg_dsn,
            "apdb_schema": "apdb_assoc_part_std",
            "partition": 1,
            "partitions": 2,
        }
        return await system_factory(self.spec())


class TestAlertPublisher(StandardComponentTests):
    component_class = PUBLISHER
    name = "AlertPublisher"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str) -> RunningSystem:
        type(self).settings = {
            "dsn": pg_dsn,
            "archive_schema": "alerts_pub_std",
            "apdb_schema": "apdb_pub_std",
        }
        return await system_factory(self.spec())

    def archive(self, running: RunningSystem) -> Path:
        return Path(running.system.config.data_dir) / self.name / "archive"

    async def cause_fault(self, running: RunningSystem, client: Client) -> None:
        """The archive folder (moved aside) replaced by a file, then a CCD's hand-off."""
        archive = self.archive(running)
        archive.rename(archive.with_name("archive.kept"))
        archive.write_text("a file where the alert archive should be")
        handle = running.system.handle(self.name)
        with pytest.raises(NotReadyError, match="went to FAULT: its alert archive failed"):
            await handle.rpc.remote("publish", alert_handoff())
        status = await handle.snapshot.remote()
        assert status["errorCode"] == ARCHIVE_FAILED
        assert "cannot append to the alert archive" in status["errorReport"]
        assert f"visit {VISIT} detector {DETECTOR}" in status["errorReport"]

    def repair_fault(self, running: RunningSystem) -> None:
        archive = self.archive(running)
        archive.unlink()
        archive.with_name("archive.kept").rename(archive)


class TestCcdProcessor(StandardComponentTests):
    component_class = PROCESSOR
    name = "CcdProcessor0"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str, mini_night: Any) -> RunningSystem:
        repo = await Repository.connect(pg_dsn, "reg_proc_std")
        try:
            await register_night(repo, mini_night)
        finally:
            await repo.close()
        type(self).settings = {
            "dsn": pg_dsn,
            "registry_schema": "reg_proc_std",
            "records_schema": "prompt_proc_std",
        }
        return await system_factory(self.spec())

    def work_list(self, running: RunningSystem) -> Path:
        return Path(running.system.config.data_dir) / self.name / "work.sqlite"

    async def cause_fault(self, running: RunningSystem, client: Client) -> None:
        """The durable work list corrupted on disk, then a nextVisit it must write down."""
        self._good = corrupt(self.work_list(running))
        await client.send_camera_event("nextVisit", visit=VISIT, detectors=[0], dayObs=20261121)
        handle = running.system.handle(self.name)
        status = await until(
            lambda: _faulted(handle.snapshot.remote()), timeout=10.0
        )  # the next status read or the nextVisit write finds it first
        assert status["errorCode"] == WORK_LIST_FAILED
        assert "work.sqlite unusable" in status["errorReport"]
        assert "file is not a database" in status["errorReport"]

    def repair_fault(self, running: RunningSystem) -> None:
        restore(self.work_list(running), self._good)


async def _faulted(snapshot: Any) -> dict | None:
    status = await snapshot
    return status if status["summaryState"] == "FAULT" else None


@pytest.fixture(scope="module")
async def association_and_publisher(system_factory: Any, pg_dsn: str) -> RunningSystem:
    return await system_factory(
        component_spec(
            "Association",
            ASSOCIATION,
            # threshold 0: every source founds or matches an object, so every one is alerted
            settings={
                "dsn": pg_dsn,
                "apdb_schema": "apdb_handoff",
                "alert_reliability_threshold": 0.0,
            },
        ),
        component_spec(
            "AlertPublisher",
            PUBLISHER,
            settings={
                "dsn": pg_dsn,
                "apdb_schema": "apdb_handoff",
                "archive_schema": "alerts_handoff",
                "records_schema": "pr_h",
            },
        ),
    )


async def test_a_ccd_becomes_alerts_once(association_and_publisher: RunningSystem) -> None:
    running = association_and_publisher
    association = running.system.handle("Association")
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        published = await ocs.open_subscription(
            ["AlertPublisher"], ["alertsPublished"], snapshot=False
        )
        await ocs.set_system_state(State.ENABLED)
        reply = await association.rpc.remote("associate", ccd_wire())
        assert reply["stored"] and reply["nDiaSources"] == 25 and reply["nNew"] > 0
        event = await wait_for_event(published, lambda e: e.data["visit"] == VISIT)
        assert event.data["nAlerts"] == 25 and event.data["latencySeconds"] > 0
        again = await association.rpc.remote("associate", ccd_wire())
        assert again["stored"] is False and again["duplicate"], "a retried CCD stores nothing"
        assert again["nDiaSources"] == 25, "and answers with what the first attempt stored"
        assert set(again["stages"]) == {"associated", "apdbStored"}
        await asyncio.sleep(1.5)
        status = await association.snapshot.remote()
        assert status["summaryState"] == "ENABLED"
        with pytest.raises(TimeoutError):
            await wait_for_event(published, lambda e: e.data["visit"] == VISIT, timeout=2.0)
        await published.aclose()

        second = await association.rpc.remote("associate", ccd_wire(visit=VISIT + 1))
        assert second["stored"] and second["nMatched"] > 0, "the next visit matches the objects"
        await ocs.set_system_state(State.STANDBY)


async def test_ccds_queued_behind_a_store_commit_together(
    association_and_publisher: RunningSystem, pg_dsn: str
) -> None:
    """CCDs that arrive while one is being stored are stored next in one transaction (group
    commit): each stored once, each answered with its own counts."""
    running = association_and_publisher
    association = running.system.handle("Association")
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        await ocs.set_system_state(State.ENABLED)
        visit = VISIT + 10
        replies = await asyncio.gather(
            *(association.rpc.remote("associate", ccd_wire(visit, d)) for d in range(12))
        )
        await ocs.set_system_state(State.STANDBY)
    assert all(r["stored"] and r["nDiaSources"] == 25 for r in replies)
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT detector, xmin::text::bigint FROM apdb_handoff.apdb_visit_detector"
            " WHERE visit = $1",
            visit,
        )
        n = await conn.fetchval(
            'SELECT count(*) FROM apdb_handoff."DiaSource" WHERE visit = $1', visit
        )
    finally:
        await conn.close()
    assert sorted(r[0] for r in rows) == list(range(12)) and n == 12 * 25
    assert len({r[1] for r in rows}) < 12, "the queued CCDs shared a transaction"


# ------------------------------------------- the FAULT fixes, on the plain classes (no Ray)
def ingested(visit: int, detector: int) -> Event:
    data = {"visit": visit, "detector": detector, "statusCode": 0}
    return Event("Ingest", "imageIngested", 1, tai_now(), data)


def error_codes(events: list[Event]) -> list[tuple[int, str]]:
    return [(e.data["errorCode"], e.data["errorReport"]) for e in events if e.topic == "errorCode"]


async def test_processor_faults_on_a_broken_work_list_and_goes_on_after_repair(
    tmp_path: Path, pg_dsn: str
) -> None:
    events: list[Event] = []
    settings = {"dsn": pg_dsn, "registry_schema": "reg_wl", "records_schema": "pr_wl"}
    processor = CcdProcessor(
        "CcdProcessor0", sink=events.append, settings=settings, data_dir=tmp_path
    )
    await processor.start()
    try:
        await processor.do_start()
        await processor.do_enable()
        good = corrupt(processor.queue.path)
        await processor.on_event(ingested(VISIT, 4))
        assert processor.summary_state == State.FAULT
        [(code, report)] = error_codes(events)
        assert code == WORK_LIST_FAILED and "file is not a database" in report

        await processor.do_standby()
        with pytest.raises(StorageError, match="cannot open the work queue"):
            await processor.do_start()
        assert processor.summary_state == State.STANDBY, "a list still broken: start refused"
        restore(processor.queue.path, good)
        await processor.do_start()
        await processor.do_enable()
        mark = len(events)
        await processor.on_event(ingested(VISIT, 4))
        await until(lambda: processor.queue.counts() == {"failed": 1})  # the work loop lives
        # announced, then recorded, after the work list: waited for, not raced
        done = await until(lambda: [e for e in events[mark:] if e.topic == "ccdProcessed"])
        assert done[-1].data["reason"] == "neither nextVisit nor the registry describes this visit"
        # Ingest's imageIngested is the stage's event: recorded, not announced again.
        assert not [e for e in events[mark:] if e.topic == "ccdStage"]
        records = processor._records
        assert records is not None
        assert "ingested" in await until(lambda: records.ccd_stages(VISIT, 4))
        await until(lambda: any(e.topic == "processingStatus" for e in events[mark:]))
    finally:
        await processor.close()


async def test_publisher_faults_on_an_unwritable_archive_and_loses_no_alert(
    tmp_path: Path, pg_dsn: str
) -> None:
    events: list[Event] = []
    settings = {
        "dsn": pg_dsn,
        "apdb_schema": "apdb_unwritable",
        "archive_schema": "alerts_unwritable",
        "records_schema": "pr_u",
    }
    publisher = AlertPublisher(
        "AlertPublisher", sink=events.append, settings=settings, data_dir=tmp_path
    )
    await publisher.start()
    try:
        await publisher.do_start()
        await publisher.do_enable()
        archive = tmp_path / "archive"
        archive.rename(tmp_path / "kept")
        archive.write_text("a file where the alert archive should be")
        handoff = alert_handoff(n=7)
        with pytest.raises(NotReadyError, match="not published") as info:
            await publisher.rpc_publish(handoff)
        assert isinstance(info.value.__cause__, StorageError)
        assert publisher.summary_state == State.FAULT
        [(code, report)] = error_codes(events)
        assert code == ARCHIVE_FAILED and "Not a directory" in report
        assert publisher.spool.head == 0, "nothing streamed that is not archived"
        with pytest.raises(NotReadyError, match="FAULT, not ENABLED"):
            await publisher.rpc_publish(handoff)

        await publisher.do_standby()
        archive.unlink()
        (tmp_path / "kept").rename(archive)
        await publisher.do_start()
        await publisher.do_enable()
        reply = await publisher.rpc_publish(handoff)
        assert reply["published"] == 7 and not reply["duplicate"], "the offered again CCD"
        first = int(handoff["sources"]["diaSourceId"][0])
        assert await publisher.rpc_fetch_alert(first) is not None
    finally:
        await publisher.close()
