"""A whole night end to end on the ``mini`` camera: real Ray, PostgreSQL, gateway and client.

Camera → SummitBuffer → Ingest → CcdProcessor pool → Association (two partitions in the
clean night) → APDB → AlertPublisher, driven by the night driver, checked by counts against
the camera's log, the registry, the APDB, the alert archive and the latency records.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from astropy.io import fits

from base.reliability import alert_threshold, alertable_sql, load_reliability_model
from base.reports.truth import load_truth, match
from commands.client import Client
from commands.replay.night_system import night_system_config, register_products
from commands.replay.runner import ReplayOutcome, replay_night
from commands.replay.watch import NightWatcher
from commands.server import RunningSystem
from config.system import AssociationConfig, SystemConfig, load_system_config, partitioned
from state.durable import sha256_hex
from state.errors import InvalidInputError
from state.states import State
from tests.conftest import TOKENS
from tests.data_path_helpers import private_postgres, start_postgres, stop_postgres

SPEED = 20.0


#: The clean night's Association: two partitions, tiles fine enough (51″) that mini's four
#: CCDs are dealt to both.
PARTITIONED = AssociationConfig(partitions=2, tile_order=12)


def night_test_config(
    dsn: str, prefix: str, staging: Path, processors: int = 2, base: SystemConfig | None = None
) -> SystemConfig:
    """The replay's system for a test night: its processors take no CPU of Ray's (the tests
    run many components on two cores), its raws staged in ``staging``."""
    return night_system_config(
        base or load_system_config(),
        dsn=dsn,
        processors=processors,
        processor_cpus=0,
        schema_prefix=prefix,
        staging=staging,
    )


async def night_system(
    system_factory: Any,
    dsn: str,
    night: Path,
    prefix: str,
    processors: int = 2,
    association: AssociationConfig | None = None,
    *,
    staging: Path,
) -> RunningSystem:
    base = load_system_config()
    if association is not None:
        base = partitioned(base.model_copy(update={"association": association}))
    config = night_test_config(dsn, prefix, staging, processors, base)
    await register_products(config, night)
    specs = [c.model_dump(by_alias=True) for c in config.components]
    return await system_factory(*specs)


async def counts(dsn: str, prefix: str, visits: list[int]) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        raws = await conn.fetch(
            f'SELECT visit, detector, checksum FROM "{prefix}registry".raws'
            " WHERE visit = ANY($1::bigint[])",
            visits,
        )
        dia = await conn.fetchrow(
            f'SELECT count(*) AS n, count(DISTINCT "diaSourceId") AS distinct_ids'
            f' FROM "{prefix}apdb"."DiaSource" WHERE visit = ANY($1::bigint[])',
            visits,
        )
        alertable = await conn.fetchval(
            f'SELECT count(*) FROM "{prefix}apdb"."DiaSource" WHERE visit = ANY($1::bigint[])'
            f" AND {alertable_sql('$2')}",
            visits,
            alert_threshold(load_reliability_model(), None),
        )
        alerts = await conn.fetchrow(
            'SELECT count(*) AS n, count(DISTINCT "diaSourceId") AS distinct_ids'
            f' FROM "{prefix}alerts".alert_archive_index WHERE visit = ANY($1::bigint[])',
            visits,
        )
        published = await conn.fetchval(
            f"SELECT count(*) FROM \"{prefix}prompt\".stage_time WHERE stage = 'alertsPublished'"
            " AND visit = ANY($1::bigint[])",
            visits,
        )
    finally:
        await conn.close()
    return {
        "raws": {(r["visit"], r["detector"]): r["checksum"] for r in raws},
        "diaSources": dia["n"],
        "distinctDiaSources": dia["distinct_ids"],
        "alertableDiaSources": alertable,
        "alerts": alerts["n"],
        "distinctAlerts": alerts["distinct_ids"],
        "publishedCcds": published,
    }


def staged_checksums(outcome: ReplayOutcome, staging: Path) -> dict[tuple[int, int], str]:
    found = {}
    for path in staging.rglob("*.fits"):
        with fits.open(path) as hdul:
            header = hdul[0].header
            found[(int(header["VISIT"]), int(header["DETECTOR"]))] = sha256_hex(path.read_bytes())
    return found


@pytest.fixture(scope="module")
async def clean_night(
    system_factory: Any, pg_dsn: str, mini_night: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ReplayOutcome, dict[str, Any], Path]:
    staging = tmp_path_factory.mktemp("staging")
    running = await night_system(
        system_factory, pg_dsn, mini_night, "e2e_", association=PARTITIONED, staging=staging
    )
    async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
        outcome = await replay_night(client, mini_night, staging, speed=SPEED, drain_seconds=180)
        await client.set_system_state(State.STANDBY)
    found = await counts(pg_dsn, "e2e_", outcome.visits)
    found["partitions"] = [
        await running.system.handle(name).rpc.remote("counts")
        for name in ("Association", "Association1")
    ]
    return outcome, found, staging


async def test_every_image_reaches_the_registry_unchanged(clean_night: Any) -> None:
    outcome, found, staging = clean_night
    assert outcome.complete, outcome.progress
    assert outcome.drive.ok and outcome.drive.ccds_staged == len(outcome.progress.expected)
    assert set(found["raws"]) == outcome.progress.expected
    assert found["raws"] == staged_checksums(outcome, staging)


async def test_every_ccd_ends_and_alerts_match_diasources(clean_night: Any) -> None:
    outcome, found, _ = clean_night
    p = outcome.progress
    assert p.finished == p.expected
    assert not p.failed, p.failed
    assert found["diaSources"] == found["distinctDiaSources"] > 0
    assert found["alerts"] == found["distinctAlerts"] == found["alertableDiaSources"] == p.alerts
    assert 0 < found["alerts"] <= found["diaSources"]
    assert p.duplicate_publications == 0
    assert found["publishedCcds"] == len(p.processed)
    assert all(0 < latency < 60 for latency in p.latencies.values()), p.latencies


async def test_partitioned_association_shares_the_night(clean_night: Any) -> None:
    """Both Association partitions stored CCDs of the night, each CCD once, none refused."""
    outcome, found, _ = clean_night
    parts = found["partitions"]
    assert [p["partition"] for p in parts] == [0, 1]
    assert all(p["associated"] > 0 for p in parts), parts
    assert sum(p["associated"] for p in parts) == len(outcome.progress.processed)
    assert all(p["duplicates"] == p["rejected"] == 0 for p in parts), parts


async def test_diasources_find_the_true_transients(
    clean_night: Any, pg_dsn: str, mini_night: Path
) -> None:
    """Against the simulation's truth: bright true transients in the difference images are
    found where the truth says, and the DIASource fluxes agree with the true ones."""
    outcome, _, _ = clean_night
    truth = load_truth(mini_night / "truth.sqlite", outcome.visits)
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            'SELECT visit, ra, dec, "psfFlux", "psfFluxErr" FROM e2e_apdb."DiaSource"'
            " WHERE visit = ANY($1::bigint[])",
            outcome.visits,
        )
    finally:
        await conn.close()
    dia = {k: np.array([r[k] for r in rows]) for k in ("visit", "ra", "dec", "psfFlux")}
    nearest, _ = match(truth, dia)
    bright = (truth.kind == "transient") & (truth.diff_mag < 21.5)
    assert bright.sum() >= 3, "the mini night has bright transients to find"
    found = bright & (nearest >= 0)
    assert found.sum() / bright.sum() >= 0.9, (found.sum(), bright.sum())
    measured = dia["psfFlux"][nearest[found]]
    assert np.median(measured / truth.diff_flux_njy[found]) == pytest.approx(1.0, abs=0.15)


# ----------------------------------------------------------------------------- faults
FAULT_SPEED = 10.0


@dataclass
class FaultLog:
    link_cut_ingested: int = -1
    killed: tuple[int, int] | None = None
    association_refused: bool = False
    postgres_restarted: bool = False


def inject_faults(running: RunningSystem, client: Client, pgdata: Path, dsn: str, log: FaultLog):
    """The four faults of issue 7, one after the other while the night goes on."""

    async def during(watcher: NightWatcher) -> None:
        p = watcher.progress
        # 1. The summit-base link is cut across two visits' readouts.
        await client.command("SummitBuffer", "cutLink")
        await asyncio.sleep(10.0 / FAULT_SPEED * 10)
        log.link_cut_ingested = len(p.ingested)
        await client.command("SummitBuffer", "restoreLink")
        # 2. A CCD processor is killed while it works on a CCD of its own.
        assert await watcher.wait_for(lambda p: any(d % 2 == 1 for _, d in p.ingested), 60)
        await asyncio.sleep(0.15)
        handle = running.system.handle("CcdProcessor1")
        os.kill(await handle.pid.remote(), signal.SIGKILL)
        log.killed = next((v, d) for v, d in sorted(p.ingested) if d % 2 == 1)
        # 3. Association gets malformed DIASources: refused, and it keeps serving the night.
        with pytest.raises(InvalidInputError):
            await running.system.handle("Association").rpc.remote("associate", _nan_ccd())
        log.association_refused = await client.get_state("Association") == State.ENABLED
        # 4. PostgreSQL restarts under everything that uses it.
        await asyncio.to_thread(stop_postgres, pgdata)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(start_postgres, pgdata, dsn)
        log.postgres_restarted = True

    return during


def _nan_ccd() -> dict[str, Any]:
    nan = np.full(3, np.nan)
    return {
        "visit": 1, "detector": 0, "band": "r", "day_obs": 20250505, "midpoint_mjd": 60800.0,
        "footprint_ra": (1.0, 1.1, 1.1), "footprint_dec": (0.0, 0.0, 0.1),
        "sources": {"diaSourceId": np.arange(3), "ra": nan, "dec": nan,
                    "midpointMjdTai": np.zeros(3), "psfFlux": nan, "psfFluxErr": nan},
        "cutouts": [],
    }  # fmt: skip


@pytest.fixture(scope="module")
async def faulty_night(
    system_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ReplayOutcome, dict[str, Any], Path, FaultLog]:
    from summit.simulation import plan_night, run_night

    night = tmp_path_factory.mktemp("night4")
    await asyncio.to_thread(run_night, plan_night("mini", 4, 3, night), raws=True)
    pgdata = tmp_path_factory.mktemp("faultpg")
    staging = tmp_path_factory.mktemp("staging")
    log = FaultLog()
    with private_postgres(pgdata) as dsn:
        try:
            running = await night_system(system_factory, dsn, night, "", staging=staging)
            async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
                outcome = await replay_night(
                    client,
                    night,
                    staging,
                    speed=FAULT_SPEED,
                    drain_seconds=240,
                    during=inject_faults(running, client, pgdata, dsn, log),
                )
                await client.set_system_state(State.STANDBY)
            found = await counts(dsn, "", outcome.visits)
        finally:
            # The restarted server is not the one the context started: stop it here.
            await asyncio.to_thread(stop_postgres, pgdata)
    return outcome, found, staging, log


async def test_faults_leave_the_night_complete_and_correct(faulty_night: Any) -> None:
    outcome, found, staging, log = faulty_night
    p = outcome.progress
    assert log.link_cut_ingested == 0, "nothing crossed the cut link"
    assert log.killed is not None and log.association_refused and log.postgres_restarted
    assert any("CcdProcessor1 restarted" in r for r in p.recoveries), p.recoveries
    assert outcome.complete, (p.expected - p.finished, p.failed, p.recoveries, log)
    # Every image taken reached the registry, unchanged.
    assert set(found["raws"]) == p.expected
    assert found["raws"] == staged_checksums(outcome, staging)
    # Every CCD processed, or failed with its reason; nothing twice.
    assert p.finished == p.expected
    assert all(reason for reason in p.failed.values())
    assert found["diaSources"] == found["distinctDiaSources"] > 0
    assert found["alerts"] == found["distinctAlerts"] == found["alertableDiaSources"]
    assert p.duplicate_publications == 0
