"""Phase 3 of a release (``base/reprocess/characterize``): one DiaObjectVariability row per
DiaObject from its full history, equal to ``algorithms.variability``; skipped when nothing
changed, idempotent, batched, failures in the ledger."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from algorithms.variability import characterize
from base.reprocess.characterize import (
    TABLE,
    characterize_release,
    variability_checksum,
    variability_table,
)
from base.reprocess.executor import InlineExecutor
from base.reprocess.ledger import Ledger
from base.reprocess.runner import ReprocessConfig, reprocess
from state.errors import InvalidInputError
from tests.test_reprocess import Recorder, register_raws
from tests.test_reprocess import config as release_config

SCHEMA = "dr_var"


REGISTRY = "var_registry"


@pytest.fixture(scope="module")
async def night(pg_dsn: str, mini_night: Path) -> Path:
    await register_raws(pg_dsn, mini_night, REGISTRY)
    return mini_night


def config(dsn: str, night: Path, release: str, release_id: int) -> ReprocessConfig:
    return release_config(dsn, night, release, release_id, REGISTRY)


async def fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def table_rows(dsn: str, schema: str = SCHEMA) -> list[asyncpg.Record]:
    return await fetch(dsn, f'SELECT * FROM "{schema}"."{TABLE}" ORDER BY "diaObjectId"')


async def unit_row(dsn: str, release: str) -> tuple[str, int, str | None]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        units = await (await Ledger.connect(pool)).units(release)
    finally:
        await pool.close()
    (row,) = [u for u in units if u.unit == "characterize"]
    assert row.kind == "characterize"
    return row.status, row.attempts, row.checksum


def as_array(rows: list[asyncpg.Record], name: str) -> np.ndarray:
    return np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=np.float64)


async def test_a_release_characterizes_every_object_from_its_full_history(
    night: Path, pg_dsn: str
) -> None:
    seen = Recorder()
    summary = await reprocess(config(pg_dsn, night, "var", 20), InlineExecutor(), seen)
    assert not summary.failed and summary.processed == 8
    objects = await fetch(pg_dsn, f'SELECT "diaObjectId" FROM "{SCHEMA}"."DiaObjectLast"')
    rows = await table_rows(pg_dsn)
    assert summary.characterized == len(rows) == len(objects) > 0
    assert seen.progress_of("characterize")[0] == (0, len(rows))
    assert seen.progress_of("characterize")[-1] == (len(rows), len(rows))

    sources = await fetch(
        pg_dsn,
        'SELECT "diaObjectId", "midpointMjdTai", band, "psfFlux", "psfFluxErr"'
        f' FROM "{SCHEMA}"."DiaSource" ORDER BY "diaSourceId"',
    )
    forced = await fetch(
        pg_dsn,
        'SELECT "diaObjectId", band, "psfFlux", "psfFluxErr"'
        f' FROM "{SCHEMA}"."DiaForcedSource" ORDER BY "diaForcedSourceId"',
    )

    def columns(records: list[asyncpg.Record]) -> dict[str, np.ndarray]:
        keys = records[0].keys() if records else ["diaObjectId", "band", "psfFlux", "psfFluxErr"]
        return {
            k: np.array(
                [np.nan if r[k] is None else r[k] for r in records],
                dtype=object if k == "band" else None,
            )
            for k in keys
        }

    ids = np.array([r["diaObjectId"] for r in rows], dtype=np.int64)
    expected = characterize(ids, columns(sources), columns(forced))
    for name in variability_table().names:
        np.testing.assert_allclose(
            as_array(rows, name), expected[name], rtol=1e-9, atol=1e-9, equal_nan=True,
            err_msg=name,
        )  # fmt: skip
    multi = [r for r in rows if r["nDiaSources"] >= 2]
    assert multi, "the mini night's pair of visits gives multi-epoch objects"
    for r in multi:
        band = next(b for b in "ugrizy" if r[f"{b}_psfFluxNdata"] >= 2)
        assert r[f"{band}_psfFluxSigma"] is not None
        assert r[f"{band}_psfFluxStetsonJ"] is not None
        assert r["lastMjdTai"] > r["firstMjdTai"]
    # Unmatched DiaSources below the quality cut found no DiaObject (diaObjectId 0).
    assert sum(r["nDiaSources"] for r in rows) == sum(s["diaObjectId"] != 0 for s in sources)

    status, attempts, checksum = await unit_row(pg_dsn, "var")
    assert (status, attempts) == ("done", 1)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        assert await variability_checksum(pool, SCHEMA) == (checksum, len(rows))
    finally:
        await pool.close()

    again_seen = Recorder()
    again = await reprocess(config(pg_dsn, night, "var", 20), InlineExecutor(), again_seen)
    assert (again.skipped, again.regions_run, again.characterized) == (8, 0, len(rows))
    assert again.checksum == summary.checksum
    assert again_seen.progress_of("characterize") == [(len(rows), len(rows))]
    assert await unit_row(pg_dsn, "var") == ("done", 1, checksum)
    assert await table_rows(pg_dsn) == rows


async def test_batches_reruns_and_stale_rows_give_the_same_table(night: Path, pg_dsn: str) -> None:
    await reprocess(config(pg_dsn, night, "var", 20), InlineExecutor())
    rows = await table_rows(pg_dsn)
    ids = [r["diaObjectId"] for r in rows]
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        whole = await variability_checksum(pool, SCHEMA)
        async with pool.acquire() as conn:  # rows of objects that do not exist (any more)
            gap = next(a + 1 for a, b in itertools.pairwise(ids) if b - a > 1)
            for stale in (ids[0] - 1, gap, ids[-1] + 1000):
                await conn.execute(
                    f'INSERT INTO "{SCHEMA}"."{TABLE}" ("diaObjectId", "nDiaSources",'
                    ' "g_psfFluxNdata", "r_psfFluxNdata", "u_psfFluxNdata", "i_psfFluxNdata",'
                    ' "z_psfFluxNdata", "y_psfFluxNdata") VALUES ($1, 9, 0, 0, 0, 0, 0, 0)'
                    " ON CONFLICT DO NOTHING",
                    stale,
                )
            await conn.execute(f'UPDATE "{SCHEMA}"."{TABLE}" SET "r_psfFluxMean" = -1')
        assert await variability_checksum(pool, SCHEMA) != whole
        for batch in (1, 7, len(ids), 50_000):
            assert await characterize_release(pool, SCHEMA, batch=batch) == whole, batch
        assert await table_rows(pg_dsn) == rows
        calls: list[tuple[int, int]] = []
        await characterize_release(
            pool, SCHEMA, batch=7, progress=lambda d, t: calls.append((d, t))
        )
        assert calls[0] == (0, len(ids)) and calls[-1] == (len(ids), len(ids))
        assert len(calls) == 1 + math.ceil(len(ids) / 7)

        with pytest.raises(InvalidInputError):
            await characterize_release(pool, SCHEMA, batch=0)
        with pytest.raises(InvalidInputError, match="no APDB"):
            await characterize_release(pool, "var_no_apdb")
    finally:
        await pool.close()


async def test_a_failed_characterization_is_recorded_and_a_later_run_completes_it(
    night: Path, pg_dsn: str
) -> None:
    cfg = config(pg_dsn, night, "varfail", 21)
    first = await reprocess(cfg, InlineExecutor())
    _, _, checksum = await unit_row(pg_dsn, "varfail")
    table = f'"dr_varfail"."{TABLE}"'
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            f'ALTER TABLE {table} ADD CONSTRAINT never CHECK ("nDiaSources" < 0) NOT VALID'
        )
        await conn.execute(
            "UPDATE reprocess.unit SET status = 'pending'"
            " WHERE unit = 'characterize' AND release = 'varfail'"
        )
        seen = Recorder()
        failed = await reprocess(cfg, InlineExecutor(), seen)
        assert list(failed.failed) == ["characterize"] and "never" in failed.failed["characterize"]
        assert [(u, a, f) for u, _, a, f in seen.failures] == [("characterize", 1, True)]
        assert seen.ends == ["failed"]
        status, attempts, _ = await unit_row(pg_dsn, "varfail")
        assert (status, attempts) == ("failed", 1)
        await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT never")
    finally:
        await conn.close()
    fixed = await reprocess(cfg, InlineExecutor())
    assert not fixed.failed and fixed.checksum == first.checksum
    assert await unit_row(pg_dsn, "varfail") == ("done", 1, checksum)
