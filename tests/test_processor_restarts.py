"""What a CcdProcessor keeps across restarts and lost events.

It finds its work in the registry, not only in events: an ingested CCD whose
``imageIngested`` never arrived (a bus restart, a lost event) is queued by the periodic look.
Its stage times are written as they happen, not with the CCD's outcome, so a processor killed
before the outcome leaves them recorded (the Performance Report counts them). A CCD ingested
without the header service's header is flagged in its outcome and the Data Quality Report.

Plain classes on a real PostgreSQL; the raw is registered as Ingest registers it.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from base.ccd_inputs import NightDirectoryRepository
from base.prompt.ccd_processor import CcdProcessor
from base.prompt_records import PromptRecords
from base.prompt_records.model import NightRecords
from base.registry.products import register_night
from base.registry.records import DetectorRecord, ExposureRecord, RawRecord
from base.registry.repository import Repository
from base.reports.quality import data_quality_report
from state.clock import tai_now
from state.events import Event
from summit.schedule import read_schedule
from tests.standard import until


async def test_a_ccd_whose_ingest_event_was_lost_is_still_processed(
    tmp_path: Path, pg_dsn: str, mini_night: Path
) -> None:
    """The registry is the record: a raw whose ``imageIngested`` never came is queued by a
    look at the registry; one whose event is merely on its way is left to it (Ingest
    registers a raw before it publishes the event)."""
    schema = "reg_proc_reconcile"
    v = read_schedule(mini_night / "schedule.sqlite")[0]
    events: list[Event] = []
    settings = {
        "dsn": pg_dsn,
        "registry_schema": schema,
        "records_schema": "pr_proc_reconcile",
        "reconcile_interval": 1.0,
        "association_wait": 0.5,
    }
    processor = CcdProcessor(
        "CcdProcessor0", sink=events.append, settings=settings, data_dir=tmp_path
    )
    await processor.start()
    repo = await Repository.connect(pg_dsn, schema)

    async def register(detector: int) -> None:
        raw = NightDirectoryRepository(mini_night).get_raw(v.visit_id, detector)
        assert raw is not None
        await repo.register_raw(
            RawRecord(
                v.visit_id, detector, "mini", f"MC_O_{v.visit_id}", str(raw), "0" * 64,
                "0" * 64, raw.stat().st_size, 64, 64, 4, True,
            ),
            ExposureRecord(
                v.visit_id, f"MC_O_{v.visit_id}", "mini", 20260101, 1, v.band, v.exptime,
                v.mjd_start, v.ra, v.dec, v.field_id,
            ),
            DetectorRecord("mini", detector, f"R00_S0{detector}", None, 64, 64),
        )  # fmt: skip

    def ingested(detector: int) -> Event:
        data = {"visit": v.visit_id, "detector": detector}
        return Event("Ingest", "imageIngested", 1, tai_now(), data)

    def processed(detector: int) -> list[Event]:
        return [e for e in events if e.topic == "ccdProcessed" and e.data["detector"] == detector]

    try:
        await register_night(repo, mini_night)
        await processor.do_start()
        await processor.do_enable()
        next_visit = {
            "visit": v.visit_id, "camera": "mini", "band": v.band, "ra": v.ra, "dec": v.dec,
            "fieldId": v.field_id, "startMjd": v.mjd_start, "exposureTime": v.exptime,
            "dayObs": 20260101, "detectors": [0, 1, 2, 3],
        }  # fmt: skip
        await processor.on_event(Event("Camera", "nextVisit", 1, tai_now(), next_visit))
        assert processor.queue.counts() == {}, "nothing ingested, nothing queued"
        await register(1)
        assert await processor._reconcile(full=False) == 0, "its event is on its way"
        await processor.on_event(ingested(1))
        await register(2)  # the raw is in the registry; its imageIngested event is lost
        done = await until(lambda: processed(2), timeout=60)
        assert done[0].data["visit"] == v.visit_id
        await until(lambda: processed(1), timeout=60)
        assert processor.counts["reconciled"] == 1
        logged = [e.data["message"] for e in events if e.topic == "logMessage"]
        missed = [m for m in logged if "without their imageIngested event" in m]
        assert len(missed) == 1 and f"{v.visit_id}/2" in missed[0], logged
        await processor.on_event(ingested(2))
        assert [len(processed(d)) for d in (1, 2)] == [1, 1], "none processed twice"
    finally:
        await repo.close()
        await processor.close()


async def test_stage_times_are_recorded_as_they_happen(tmp_path: Path, pg_dsn: str) -> None:
    """DISABLED (no work done), the stages of three CCDs arrive; the processor then dies."""
    schema, visit = "pr_proc_stages", 2026010100042
    settings = {"dsn": pg_dsn, "registry_schema": "reg_proc_stages", "records_schema": schema}
    processor = CcdProcessor(
        "CcdProcessor0", sink=lambda _: None, settings=settings, data_dir=tmp_path
    )
    await processor.start()
    try:
        await processor.do_start()
        t = tai_now()
        await processor.on_event(
            Event("Camera", "endReadout", 1, t, {"visit": visit, "detectors": [0, 1, 2]})
        )
        for d in (0, 1, 2):
            data = {"visit": visit, "detector": d}
            await processor.on_event(Event("SummitBuffer", "imageInBuffer", d, t + 1, data))
            await processor.on_event(
                Event("Ingest", "imageIngested", d, t + 2, {**data, "statusCode": 0})
            )
        rows = await until(lambda: _stages(pg_dsn, schema, visit, 9), timeout=20)
    finally:
        await processor.close()  # no outcome was ever written
    names = ("endReadout", "inBuffer", "ingested")
    assert rows == {(d, s): t + k for d in (0, 1, 2) for k, s in enumerate(names)}
    conn = await asyncpg.connect(pg_dsn)
    try:
        outcomes = await conn.fetchval(f'SELECT count(*) FROM "{schema}".ccd_outcome')
    finally:
        await conn.close()
    assert outcomes == 0


async def _stages(dsn: str, schema: str, visit: int, n: int) -> dict | None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f'SELECT detector, stage, tai FROM "{schema}".stage_time WHERE visit = $1', visit
        )
    finally:
        await conn.close()
    found = {(r["detector"], r["stage"]): r["tai"] for r in rows}
    return found if len(found) >= n else None


async def test_a_ccd_without_its_header_is_flagged_not_silent(
    tmp_path: Path, pg_dsn: str, mini_night: Path
) -> None:
    schema, records_schema = "reg_proc_noheader", "pr_proc_noheader"
    v = read_schedule(mini_night / "schedule.sqlite")[0]
    events: list[Event] = []
    settings = {
        "dsn": pg_dsn,
        "registry_schema": schema,
        "records_schema": records_schema,
    }
    processor = CcdProcessor(
        "CcdProcessor0", sink=events.append, settings=settings, data_dir=tmp_path
    )
    await processor.start()
    repo = await Repository.connect(pg_dsn, schema)
    try:
        await register_night(repo, mini_night)
        await processor.do_start()
        await processor.do_enable()
        for detector, merged in ((1, False), (3, True)):
            raw = NightDirectoryRepository(mini_night).get_raw(v.visit_id, detector)
            assert raw is not None
            await repo.register_raw(
                RawRecord(v.visit_id, detector, "mini", f"MC_O_{v.visit_id}", str(raw),
                          "0" * 64, "0" * 64, raw.stat().st_size, 64, 64, 4, merged),
                ExposureRecord(v.visit_id, f"MC_O_{v.visit_id}", "mini", 20260101, 1, v.band,
                               v.exptime, v.mjd_start, v.ra, v.dec, v.field_id),
                DetectorRecord("mini", detector, f"R00_S0{detector}", None, 64, 64),
            )  # fmt: skip
            data = {"visit": v.visit_id, "detector": detector, "statusCode": 0}
            await processor.on_event(Event("Ingest", "imageIngested", 1, tai_now(), data))
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            records = await PromptRecords.connect(pool, records_schema)

            async def both_recorded() -> NightRecords | None:
                night = await records.fetch_night(visits=[v.visit_id])
                return night if len(night.outcomes) == 2 else None

            # Two CCDs through the worker process: minutes on a loaded machine.
            night = await until(both_recorded, timeout=240)
        finally:
            await pool.close()
    finally:
        await repo.close()
        await processor.close()
    logged = [e.data["message"] for e in events if e.topic == "logMessage"]
    assert sum("without the header service's header" in m for m in logged) == 1, logged
    flags = {o.detector: o.flags for o in night.outcomes}
    assert flags == {1: ("no_header",), 3: ()}
    assert data_quality_report(night)["flags"] == {"no_header": 1}
