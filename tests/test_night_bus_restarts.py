"""The event bus killed at every visit of a night: events are notifications, the record is
elsewhere (the camera's readout records, the registry, the APDB's alert outbox), so every CCD
is still processed and its alerts published once.

Real Ray, PostgreSQL, gateway and client on the ``mini`` camera; the bus actor is killed
(Ray restarts it empty) right after each visit's ``endReadout`` goes out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import ray

from commands.client import Client
from commands.night_driver import DriveProgress
from commands.replay.night_system import PROCESSOR_CLASS, register_products
from commands.replay.runner import replay_night
from state.states import State
from tests.conftest import TOKENS
from tests.standard import until
from tests.test_night_e2e import SPEED, counts, night_test_config

PREFIX = "bus_"
FAST_RECONCILE = {PROCESSOR_CLASS: 2.0, "summit.summit_buffer:SummitBuffer": 2.0}


async def outcomes(dsn: str, visits: list[int]) -> dict[tuple[int, int], str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f'SELECT visit, detector, status FROM "{PREFIX}prompt".ccd_outcome'
            " WHERE visit = ANY($1::bigint[])",
            visits,
        )
    finally:
        await conn.close()
    return {(r["visit"], r["detector"]): r["status"] for r in rows}


async def test_bus_killed_at_every_visit_leaves_every_ccd_processed(
    system_factory: Any, pg_dsn: str, mini_night: Path, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    config = night_test_config(pg_dsn, PREFIX, staging)
    await register_products(config, mini_night)
    specs = []
    for c in config.components:
        spec = c.model_dump(by_alias=True)
        if c.cls in FAST_RECONCILE:
            spec["settings"] = {**spec["settings"], "reconcile_interval": FAST_RECONCILE[c.cls]}
        specs.append(spec)
    running = await system_factory(*specs)
    kills: list[int] = []

    def kill_at_each_visit(p: DriveProgress) -> None:
        if p.visits_sent > len(kills):
            ray.kill(running.system.bus, no_restart=False)
            kills.append(p.visits_sent)

    async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
        outcome = await replay_night(
            client, mini_night, staging, speed=SPEED, drain_seconds=30, on_drive=kill_at_each_visit
        )
        expected = {(v, d) for v in outcome.visits for d in range(4)}
        assert kills == list(range(1, len(outcome.visits) + 1))
        ended = await until(lambda: _all_ended(pg_dsn, outcome.visits, len(expected)), timeout=180)
        await client.set_system_state(State.STANDBY)
    assert set(ended) == expected
    assert set(ended.values()) == {"processed"}, ended
    found = await counts(pg_dsn, PREFIX, outcome.visits)
    assert set(found["raws"]) == expected
    assert found["diaSources"] == found["distinctDiaSources"] > 0
    assert found["alerts"] == found["distinctAlerts"] == found["alertableDiaSources"] > 0


async def _all_ended(dsn: str, visits: list[int], n: int) -> dict | None:
    found = await outcomes(dsn, visits)
    conn = await asyncpg.connect(dsn)
    try:
        owed = await conn.fetchval(
            f'SELECT count(*) FROM "{PREFIX}apdb".alert_outbox WHERE published_at IS NULL'
        )
    finally:
        await conn.close()
    return found if len(found) == n and owed == 0 else None
