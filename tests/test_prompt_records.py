"""Prompt-processing records on a real PostgreSQL, and the latency summary on constructed nights."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
import pytest_asyncio

from base.apdb import DatabaseUnavailableError
from base.prompt.outcomes import success
from base.prompt_records import (
    STAGES,
    STORE,
    CcdOutcome,
    NightRecords,
    PromptRecords,
    StageTime,
    VisitRecord,
    latency_summary,
    stage_array,
    worker_cpu_per_ccd,
)
from state.errors import InvalidInputError

SCHEMA = "prompt_test_records"
T0 = 1.8e9


def visit(v: int, day_obs: int = 20260101, n_det: int = 2) -> VisitRecord:
    return VisitRecord(
        visit=v,
        day_obs=day_obs,
        camera="mini",
        band="r",
        ra=150.0,
        dec=-30.0,
        obs_mjd=60800.1 + v * 1e-3,
        exposure_time=30.0,
        n_detectors=n_det,
        field_id=7,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    await p.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    yield p
    await p.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def records(pool: asyncpg.Pool) -> PromptRecords:
    return await PromptRecords.connect(pool, schema=SCHEMA)


async def test_connect_is_idempotent(pool: asyncpg.Pool, records: PromptRecords) -> None:
    again = await PromptRecords.connect(pool, schema=SCHEMA)
    assert again.schema == SCHEMA
    versions = await pool.fetch(
        f'SELECT version FROM "{SCHEMA}".schema_version WHERE component = $1', "prompt"
    )
    assert [r["version"] for r in versions] == [m.version for m in STORE.migrations]
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", SCHEMA
    )
    assert {r["table_name"] for r in tables} >= {
        "visit",
        "stage_time",
        "ccd_outcome",
        "ccd_attempt",
        "ccd_alerts",
        "ccd_claim",
    }


async def test_record_visit_is_an_idempotent_upsert(records: PromptRecords) -> None:
    await records.record_visit(visit(100))
    await records.record_visit(visit(100))
    night = await records.fetch_night(visits=[100])
    assert night.visits == (visit(100),)
    moved = VisitRecord(**{**visit(100).__dict__, "band": "g"})
    await records.record_visit(moved)
    assert (await records.fetch_night(visits=[100])).visits[0].band == "g"


async def test_stages_first_write_wins(records: PromptRecords) -> None:
    rows = [
        StageTime(200, None, "endReadout", T0),
        StageTime(200, 0, "ingested", T0 + 2.0),
        StageTime(200, 0, "isrDone", T0 + 5.0),
        StageTime(200, 0, "isrDone", T0 + 99.0),  # same key later in the same call: ignored
    ]
    assert await records.record_stages(rows) == 3
    retry = [StageTime(200, 0, "isrDone", T0 + 50.0), StageTime(200, 0, "alertsPublished", T0 + 9)]
    assert await records.record_stages(retry) == 1
    assert await records.record_stages(retry) == 0
    assert await records.record_stages([]) == 0
    night = await records.fetch_night(visits=[200])
    got = {(int(r["detector"]), STAGES[r["stage"]]): float(r["tai"]) for r in night.stages}
    assert got == {
        (-1, "endReadout"): T0,
        (0, "ingested"): T0 + 2.0,
        (0, "isrDone"): T0 + 5.0,
        (0, "alertsPublished"): T0 + 9.0,
    }
    times = night.ccd_times()
    assert list(times.detector) == [0]
    assert times.stage("endReadout")[0] == T0  # the whole-visit row fills the CCD


async def test_bulk_stages_many_rows(records: PromptRecords) -> None:
    rows = [
        StageTime(300 + v, d, s, T0 + v * 40 + i)
        for v in range(20)
        for d in range(9)
        for i, s in enumerate(STAGES)
    ]
    assert await records.record_stages(rows) == len(rows)
    night = await records.fetch_night(visits=[300 + v for v in range(20)])
    assert len(night.stages) == len(rows)
    assert night.ccd_times().tai.shape == (180, len(STAGES))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stage": "demosaiced"}, "unknown stage"),
        ({"tai": math.nan}, "finite"),
        ({"tai": math.inf}, "finite"),
        ({"tai": "soon"}, "number"),
        ({"detector": None, "stage": "isrDone"}, "needs a detector"),
        ({"detector": -3}, ">= 0"),
        ({"visit": 1.5}, "integer"),
    ],
)
def test_bad_stage_rows_are_rejected(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"visit": 1, "detector": 0, "stage": "isrDone", "tai": T0}
    with pytest.raises(InvalidInputError, match=match):
        StageTime(**{**base, **kwargs})  # type: ignore[arg-type]


async def test_bad_rows_write_nothing(records: PromptRecords) -> None:
    with pytest.raises(InvalidInputError):
        await records.record_stages([StageTime(400, 0, "isrDone", T0), "isrDone"])  # type: ignore[list-item]
    assert len((await records.fetch_night(visits=[400])).stages) == 0
    with pytest.raises(InvalidInputError):
        await records.record_visit({"visit": 400})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="exactly one"):
        await records.fetch_night()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"status": "done"}, "status"),
        ({"status": "failed"}, "failure_type"),
        ({"attempt": 0}, ">= 1"),
        ({"zeropoint": math.inf}, "finite"),
        ({"n_alerts": -1}, ">= 0"),
        ({"flags": "edge"}, "flags"),
        ({"cpu_raw_s": math.inf}, "cpu_raw_s"),
        ({"minor_faults": -3}, "minor_faults"),
    ],
)
def test_bad_outcomes_are_rejected(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"visit": 1, "detector": 0, "attempt": 1, "status": "processed"}
    with pytest.raises(InvalidInputError, match=match):
        CcdOutcome(**{**base, **kwargs})  # type: ignore[arg-type]


def test_bad_visits_are_rejected() -> None:
    good = visit(1).__dict__
    for change, match in [
        ({"band": "q"}, "band"),
        ({"dec": 95.0}, "out of range"),
        ({"obs_mjd": math.nan}, "finite"),
        ({"exposure_time": 0.0}, "> 0"),
        ({"n_detectors": 0}, ">= 1"),
        ({"camera": ""}, "camera"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            VisitRecord(**{**good, **change})


async def test_outcome_upsert_keeps_latest_attempt(records: PromptRecords) -> None:
    first = CcdOutcome(500, 3, 1, "failed", "actor_died", "worker killed", "retried")
    second = CcdOutcome(
        500, 3, 2, "processed", n_dia_sources=12, n_alerts=11, zeropoint=31.2,
        seeing_arcsec=0.8, psf_fwhm_px=4.0, flags=("edge",),
    )  # fmt: skip
    assert await records.record_outcome(first)
    assert await records.record_outcome(second)
    assert await records.record_outcome(second)  # a repeat is harmless
    assert not await records.record_outcome(first)  # a stale report changes nothing
    night = await records.fetch_night(visits=[500])
    assert night.outcomes == (second,)
    assert night.outcomes[0].sky_level is None  # NaN/None: not measured
    assert [(a.attempt, a.status, a.failure_type) for a in night.attempts] == [
        (1, "failed", "actor_died"),
        (2, "processed", None),
    ]


async def test_worker_cpu_split_is_stored_and_averaged_over_processed_ccds(
    records: PromptRecords,
) -> None:
    split = {"cpu_preload_s": 0.3, "cpu_handoff_s": 0.01, "cpu_raw_s": 0.05,
             "pixel_cpu_s": 2.5, "cpu_outputs_s": 0.02, "cpu_rest_s": 0.02, "cpu_gc_s": 0.01,
             "minor_faults": 20000, "preload_minor_faults": 2400}  # fmt: skip
    result = {"summary": {"zeropoint": 31.0, **split, "preloadReady": 1.0}}
    one = CcdOutcome(502, 0, 1, "processed", **success(result, 3, duplicate=False).metrics)
    two = CcdOutcome(502, 1, 1, "processed", **{**split, "pixel_cpu_s": 3.5, "minor_faults": 0})
    failed = CcdOutcome(502, 2, 1, "failed", "bad_input", **{**split, "pixel_cpu_s": 9.0})
    for o in (one, two, failed):
        await records.record_outcome(o)
    night = await records.fetch_night(visits=[502])
    assert night.outcomes == (one, two, failed)
    assert one.pixel_cpu_s == 2.5 and one.minor_faults == 20000 and one.zeropoint == 31.0
    mean = worker_cpu_per_ccd(night.outcomes)
    assert mean["ccds"] == 2  # the failed CCD's split is not a processed CCD's
    assert mean["pixel_cpu_s"] == pytest.approx(3.0)
    assert mean["minor_faults"] == pytest.approx(10000)
    # the collector's share lies inside the other parts: not counted twice
    assert mean["worker_core_s"] == pytest.approx(0.3 + 0.01 + 0.05 + 3.0 + 0.02 + 0.02)
    assert mean["overhead_core_s"] == pytest.approx(0.4)
    assert worker_cpu_per_ccd((CcdOutcome(502, 3, 1, "processed"),)) == {}


async def test_nan_metric_is_stored_as_null(records: PromptRecords) -> None:
    o = CcdOutcome(501, 0, 1, "processed", zeropoint=math.nan, astrom_rms_mas=12.5)
    assert o.zeropoint is None
    await records.record_outcome(o)
    assert (await records.fetch_night(visits=[501])).outcomes == (o,)


async def test_record_alerts_counts_and_stage(records: PromptRecords) -> None:
    await records.record_outcome(CcdOutcome(550, 1, 1, "processed", n_dia_sources=7))
    assert await records.record_alerts(550, 1, 6, T0 + 20.0)
    assert not await records.record_alerts(550, 1, 9, T0 + 30.0)  # republished: first wins
    night = await records.fetch_night(visits=[550])
    assert night.outcomes[0].n_alerts == 6
    assert [(STAGES[r["stage"]], float(r["tai"])) for r in night.stages] == [
        ("alertsPublished", T0 + 20.0)
    ]
    with pytest.raises(InvalidInputError):
        await records.record_alerts(550, 2, -1, T0)
    with pytest.raises(InvalidInputError):
        await records.record_alerts(550, 2, 1, math.nan)


def test_numpy_values_are_normalized() -> None:
    o = CcdOutcome(np.int64(5), np.int32(1), np.int64(1), "processed", n_sources=np.int64(3),
                   zeropoint=np.float32(30.5))  # fmt: skip
    assert type(o.visit) is int and type(o.n_sources) is int and type(o.zeropoint) is float
    st = StageTime(np.int64(5), np.int64(2), "isrDone", np.float64(T0))
    assert type(st.detector) is int and type(st.tai) is float


async def test_fetch_by_day_obs(records: PromptRecords) -> None:
    for v in (600, 601):
        await records.record_visit(visit(v, day_obs=20260202))
    await records.record_visit(visit(602, day_obs=20260203))
    await records.record_stages([StageTime(600, 1, "ingested", T0)])
    night = await records.fetch_night(day_obs=20260202)
    assert [v.visit for v in night.visits] == [600, 601]
    assert night.day_obs == 20260202 and len(night.stages) == 1
    assert (await records.fetch_night(day_obs=19990101)).empty


async def test_unreachable_database_is_retriable(pg_dsn: str) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    records = await PromptRecords.connect(pool, schema=SCHEMA)
    await pool.close()
    with pytest.raises(DatabaseUnavailableError):
        await records.record_stages([StageTime(700, 0, "isrDone", T0)])


# ------------------------------------------------------------------ latency summary math
def _night(latencies: dict[int, list[float]], alerts: int = 10) -> NightRecords:
    """Visits whose CCD d publishes alerts latencies[v][d] s after a visit-level endReadout."""
    rows, outcomes = [], []
    for v, lats in latencies.items():
        t0 = T0 + 100.0 * v
        rows.append(StageTime(v, None, "endReadout", t0))
        for d, lat in enumerate(lats):
            rows += [
                StageTime(v, d, "preloadReady", t0 - 5.0),  # ready before the image: no wait
                StageTime(v, d, "ingested", t0 + 2.0),
                StageTime(v, d, "isrDone", t0 + 4.0),
                StageTime(v, d, "alertsPublished", t0 + lat),
            ]
            outcomes.append(CcdOutcome(v, d, 1, "processed", n_alerts=alerts))
    return NightRecords((), stage_array(rows), tuple(outcomes))


def test_latency_summary_math() -> None:
    night = _night({1: [10.0, 20.0], 2: [30.0, 70.0], 3: [40.0, 50.0], 4: [5.0, 5.0]})
    s = latency_summary(night)
    ccd = np.array([10, 20, 30, 70, 40, 50, 5, 5], float)
    assert s.ccd.n == 8
    assert s.ccd.p50 == pytest.approx(np.percentile(ccd, 50))
    assert s.ccd.p95 == pytest.approx(np.percentile(ccd, 95))
    assert s.ccd.max == 70.0
    assert s.visit_latency == {1: 20.0, 2: 70.0, 3: 50.0, 4: 5.0}
    assert s.visit.p50 == pytest.approx(35.0) and s.visit.max == 70.0
    assert s.n_visits_within_budget == 3 and s.visit_share_within_budget == 0.75
    assert s.alert_share_within_budget == pytest.approx(7 / 8)
    steps = {st.stage: st for st in s.steps}
    assert steps["inBuffer"].n == 0 and steps["inBuffer"].median_s is None
    assert steps["ingested"].median_s == pytest.approx(2.0)
    assert steps["preloadReady"].median_s == 0.0  # done ahead: off the critical path
    assert steps["isrDone"].median_s == pytest.approx(2.0)
    # alertsPublished follows isrDone directly (the stages between are missing here)
    assert steps["alertsPublished"].median_s == pytest.approx(np.median(ccd - 4.0))
    assert s.preload_lead_median_s == pytest.approx(5.0)
    assert latency_summary(night, budget_s=100.0).visit_share_within_budget == 1.0


def test_preload_lead_per_visit_is_its_latest_ccd() -> None:
    rows = []
    for v, leads in {1: [5.0, 7.0], 2: [4.0, -3.0]}.items():
        t0 = T0 + 100.0 * v
        rows.append(StageTime(v, None, "endReadout", t0))
        rows += [StageTime(v, d, "preloadReady", t0 - lead) for d, lead in enumerate(leads)]
    rows.append(StageTime(3, 0, "endReadout", T0 + 300.0))  # never preloaded: not listed
    s = latency_summary(NightRecords((), stage_array(rows), ()))
    assert s.preload_lead_by_visit == {1: pytest.approx(5.0), 2: pytest.approx(-3.0)}
    assert s.to_dict()["preloadLeadByVisit"] == {"1": pytest.approx(5.0), "2": pytest.approx(-3.0)}


def test_latency_summary_of_an_empty_or_unfinished_night() -> None:
    empty = latency_summary(NightRecords((), stage_array([]), ()))
    assert empty.ccd.n == 0 and empty.visit_share_within_budget is None
    assert empty.alert_share_within_budget is None
    unfinished = NightRecords((), stage_array([StageTime(9, 0, "endReadout", T0)]), ())
    s = latency_summary(unfinished)
    assert s.ccd.n == 0 and s.visit_latency == {}
    assert s.to_dict()["ccd"] == {"n": 0, "p50": None, "p95": None, "max": None}


async def test_latency_summary_from_the_database(records: PromptRecords) -> None:
    night = _night({800: [12.0, 18.0], 801: [61.0, 30.0]})
    await records.record_stages([
        StageTime(int(r["visit"]), None if r["detector"] < 0 else int(r["detector"]),
                  STAGES[r["stage"]], float(r["tai"]))
        for r in night.stages
    ])  # fmt: skip
    for o in night.outcomes:
        await records.record_outcome(o)
    s = await records.latency_summary(visits=[800, 801])
    assert s.visit_latency == {800: 18.0, 801: 61.0}
    assert s.visit_share_within_budget == 0.5
