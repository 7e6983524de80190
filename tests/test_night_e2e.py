"""A whole night end to end on the ``mini`` camera: real Ray, PostgreSQL, gateway and client.

Camera → SummitBuffer → Ingest → CcdProcessor pool → Association → APDB → AlertPublisher,
driven by the night driver, checked by counts against the camera's log, the registry, the
APDB, the alert archive and the latency records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from commands.client import Client
from commands.replay.night_system import night_system_config
from commands.replay.runner import ReplayOutcome, replay_night
from commands.server import RunningSystem
from config.system import load_system_config
from state.states import State
from tests.conftest import TOKENS

SPEED = 20.0


async def night_system(
    system_factory: Any, dsn: str, night: Path, prefix: str, processors: int = 2
) -> RunningSystem:
    config = night_system_config(
        load_system_config(),
        dsn=dsn,
        night_dir=night,
        processors=processors,
        processor_cpus=0,
        schema_prefix=prefix,
    )
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
        "alerts": alerts["n"],
        "distinctAlerts": alerts["distinct_ids"],
        "publishedCcds": published,
    }


def staged_checksums(outcome: ReplayOutcome, staging: Path) -> dict[tuple[int, int], str]:
    from state.durable import sha256_hex

    found = {}
    for path in staging.rglob("*.fits"):
        from astropy.io import fits

        with fits.open(path) as hdul:
            header = hdul[0].header
            found[(int(header["VISIT"]), int(header["DETECTOR"]))] = sha256_hex(path.read_bytes())
    return found


@pytest.fixture(scope="module")
async def clean_night(
    system_factory: Any, pg_dsn: str, mini_night: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ReplayOutcome, dict[str, Any], Path]:
    running = await night_system(system_factory, pg_dsn, mini_night, "e2e_")
    staging = tmp_path_factory.mktemp("staging")
    async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
        outcome = await replay_night(client, mini_night, staging, speed=SPEED, drain_seconds=180)
        await client.set_system_state(State.STANDBY)
    return outcome, await counts(pg_dsn, "e2e_", outcome.visits), staging


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
    assert found["alerts"] == found["distinctAlerts"] == found["diaSources"] == p.alerts
    assert p.duplicate_publications == 0
    assert found["publishedCcds"] == len(p.processed)
    assert all(0 < latency < 60 for latency in p.latencies.values()), p.latencies
