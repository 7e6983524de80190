"""Concurrent APDB stores that update the same DiaObjects: exactly one open version per object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest_asyncio

from algorithms.association_run import associate
from base.apdb import Apdb, Region
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky

SCHEMA = "apdb_test_concurrency"
MJD = 60810.0
N = 60


@pytest_asyncio.fixture(loop_scope="session")
async def apdb(pg_dsn: str) -> AsyncIterator[Apdb]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    await conn.close()
    db = await Apdb.connect(pg_dsn, schema=SCHEMA, max_size=4)
    yield db
    await db.close()


async def _open_versions(pg_dsn: str) -> dict[int, int]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            f'SELECT "diaObjectId", count(*) FROM "{SCHEMA}"."DiaObject"'
            ' WHERE "validityEndMjdTai" IS NULL GROUP BY 1'
        )
    finally:
        await conn.close()
    return {int(r[0]): int(r[1]) for r in rows}


async def _seed(apdb: Apdb, rng: np.random.Generator, ra0: float) -> tuple[np.ndarray, ...]:
    ra, dec = random_sky(rng, N, ra0, 5.0, 0.02)
    src = dia_sources(rng, ra, dec, 500, 0, MJD, flux=np.full(N, 8000.0))
    src["diaObjectId"] = src["diaSourceId"].copy()
    assert (await apdb.store(500, 0, src, dia_objects_from_sources(src, MJD))).stored
    return ra, dec, src["diaSourceId"]


async def _associated(
    apdb: Apdb, rng: np.random.Generator, ra: np.ndarray, dec: np.ndarray, visit: int, det: int,
    mjd: float,
) -> tuple:  # fmt: skip
    """One CCD's association result against a preload taken now (before the others store)."""
    pre = await apdb.preload(Region.box(float(np.mean(ra)), 5.0, 0.05), mjd)
    src = dia_sources(rng, ra, dec, visit, det, mjd, flux=np.full(len(ra), 9000.0))
    return associate(src, pre.objects, pre.sources, pre.forced_sources, mjd)


async def test_two_detectors_of_one_visit_update_the_same_objects(apdb: Apdb, pg_dsn: str) -> None:
    rng = np.random.default_rng(7)
    ra, dec, ids = await _seed(apdb, rng, 40.0)
    # Both detectors preload before either stores: each believes nDiaSources becomes 2.
    a = await _associated(apdb, rng, ra, dec, 501, 1, MJD + 1)
    b = await _associated(apdb, rng, ra, dec, 501, 2, MJD + 1)
    assert a.n_matched == b.n_matched == N
    assert set(a.objects["nDiaSources"].tolist()) == {2}
    results = await asyncio.gather(
        apdb.store(501, 1, a.sources, a.objects), apdb.store(501, 2, b.sources, b.objects)
    )
    assert all(r.stored for r in results)
    assert sorted(r.counts.get("contended", 0) for r in results) == [0, N]
    versions = await _open_versions(pg_dsn)
    assert {i: versions[i] for i in ids.tolist()} == dict.fromkeys(ids.tolist(), 1)
    pre = await apdb.preload(Region.box(40.0, 5.0, 0.05), MJD + 2)
    assert len(pre.objects["diaObjectId"]) == N
    assert set(pre.objects["nDiaSources"].tolist()) == {3}
    assert set(pre.objects["validityStartMjdTai"].tolist()) == {MJD + 1}
    assert np.all(pre.objects["r_psfFluxNdata"] == 3)
    # The seed version plus one version for visit 501 (the second replaced the first's).
    assert await apdb.count("DiaObject") == 2 * N


async def test_overlapping_visits_stored_concurrently_and_out_of_order(
    apdb: Apdb, pg_dsn: str
) -> None:
    rng = np.random.default_rng(8)
    ra, dec, ids = await _seed(apdb, rng, 60.0)
    early = await _associated(apdb, rng, ra, dec, 601, 3, MJD + 1)
    late = await _associated(apdb, rng, ra, dec, 602, 3, MJD + 2)
    # The later visit stores first; the earlier one finds newer versions and merges into them.
    assert (await apdb.store(602, 3, late.sources, late.objects)).stored
    res = await apdb.store(601, 3, early.sources, early.objects)
    assert res.counts["contended"] == N
    versions = await _open_versions(pg_dsn)
    assert {i: versions[i] for i in ids.tolist()} == dict.fromkeys(ids.tolist(), 1)
    pre = await apdb.preload(Region.box(60.0, 5.0, 0.05), MJD + 3)
    assert set(pre.objects["nDiaSources"].tolist()) == {3}
    assert set(pre.objects["validityStartMjdTai"].tolist()) == {MJD + 2}
    # Many concurrent writers of the same objects: still one open version each.
    rounds = [await _associated(apdb, rng, ra, dec, 700 + k, 4, MJD + 4) for k in range(4)]
    await asyncio.gather(
        *(apdb.store(700 + k, 4, r.sources, r.objects) for k, r in enumerate(rounds))
    )
    versions = await _open_versions(pg_dsn)
    assert {i: versions[i] for i in ids.tolist()} == dict.fromkeys(ids.tolist(), 1)
    pre = await apdb.preload(Region.box(60.0, 5.0, 0.05), MJD + 5)
    assert set(pre.objects["nDiaSources"].tolist()) == {7}
