"""APDB on a real PostgreSQL: schema from apdb.yaml, migrations, idempotent store, preload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
import pytest_asyncio

from base.apdb import Apdb, DatabaseUnavailableError, IdPacker, Region, pixel_ids
from base.apdb import schema as sch
from base.apdb.apdb import store_spec
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from base.db.migrate import Store, migrate
from base.db.pool import connect_pool
from state.errors import DmcsError, RetriableError, StorageError

SCHEMA = "apdb_test_apdb"
MJD = 60800.2


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def apdb(pg_dsn: str) -> AsyncIterator[Apdb]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    await conn.close()
    db = await Apdb.connect(pg_dsn, schema=SCHEMA)
    yield db
    await db.close()


def test_tables_follow_apdb_yaml() -> None:
    tables = sch.tables()
    src = tables["DiaSource"]
    assert src.primary_key == ("diaSourceId",)
    assert src.column("psfFlux").pg_type == "real"
    assert src.column("midpointMjdTai").pg_type == "double precision"
    assert not src.column("midpointMjdTai").nullable
    assert tables["DiaForcedSource"].primary_key == ("diaObjectId", "visit", "detector")
    # DiaObjectLast carries every DiaObject column so the preload reads one table.
    assert tables["DiaObjectLast"].names == tables["DiaObject"].names
    assert len(src.columns) > 100


async def test_columns_in_database_match_yaml(apdb: Apdb, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = $1 AND table_name = 'DiaSource'",
            SCHEMA,
        )
    finally:
        await conn.close()
    db_cols = {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in rows}
    for c in sch.tables()["DiaSource"].columns:
        assert db_cols[c.name][0] == c.pg_type
        assert (db_cols[c.name][1] == "YES") == c.nullable
    assert await apdb.schema_version() == 2


async def test_migrations_rerun_is_noop(apdb: Apdb, pg_dsn: str) -> None:
    again = await Apdb.connect(pg_dsn, schema=SCHEMA)
    try:
        assert await again.schema_version() == 2
    finally:
        await again.close()


def test_ids_unique_across_releases_and_kinds() -> None:
    a = IdPacker(release=0).dia_source_ids(1234, 17, 1000)
    b = IdPacker(release=1).dia_source_ids(1234, 17, 1000)
    c = IdPacker(release=0).forced_source_ids(1234, 17, 1000)
    d = IdPacker(release=0).dia_source_ids(1234, 18, 1000)
    allv = np.concatenate([a, b, c, d])
    assert len(np.unique(allv)) == 4000 and allv.min() > 0
    u = IdPacker.unpack(int(b[5]))
    assert (u.release, u.kind, u.visit, u.detector, u.index) == (1, 0, 1234, 17, 5)


def _visit(rng: np.random.Generator, visit: int, detector: int, n: int) -> tuple[dict, dict]:
    ra, dec = random_sky(rng, n, 150.0, 2.0, 0.1)
    src = dia_sources(rng, ra, dec, visit, detector, MJD + visit * 1e-3)
    src["diaObjectId"] = src["diaSourceId"].copy()
    obj = dia_objects_from_sources(src, MJD + visit * 1e-3)
    return src, obj


async def test_store_is_idempotent(apdb: Apdb) -> None:
    rng = np.random.default_rng(1)
    src, obj = _visit(rng, 11, 3, 500)
    first = await apdb.store(11, 3, src, obj)
    assert first.stored and first.counts["DiaSource"] == 500
    n_src, n_obj = await apdb.count("DiaSource"), await apdb.count("DiaObject")
    again = await apdb.store(11, 3, src, obj)
    assert not again.stored
    assert await apdb.count("DiaSource") == n_src
    assert await apdb.count("DiaObject") == n_obj
    assert await apdb.is_stored(11, 3)
    # Two concurrent retries of the same CCD: exactly one stores.
    src2, obj2 = _visit(rng, 12, 3, 200)
    results = await asyncio.gather(apdb.store(12, 3, src2, obj2), apdb.store(12, 3, src2, obj2))
    assert sorted(r.stored for r in results) == [False, True]
    assert await apdb.count("DiaSource") == n_src + 200


async def test_failed_store_leaves_nothing(apdb: Apdb) -> None:
    rng = np.random.default_rng(2)
    src, obj = _visit(rng, 21, 4, 50)
    src["diaSourceId"][1] = src["diaSourceId"][0]  # primary-key violation mid-COPY
    before = await apdb.count("DiaObject")
    with pytest.raises(StorageError, match="UniqueViolation"):
        await apdb.store(21, 4, src, obj)
    assert await apdb.count("DiaObject") == before
    assert not await apdb.is_stored(21, 4)


async def test_preload_returns_region_contents(apdb: Apdb) -> None:
    rng = np.random.default_rng(3)
    ra, dec = random_sky(rng, 3000, 200.0, -30.0, 0.5)
    src = dia_sources(rng, ra, dec, 31, 5, MJD)
    src["diaObjectId"] = src["diaSourceId"].copy()
    obj = dia_objects_from_sources(src, MJD)
    assert (await apdb.store(31, 5, src, obj)).stored
    region = Region.box(200.0, -30.0, 0.2, pad_arcsec=10.0)
    pre = await apdb.preload(region, MJD + 1.0)
    expect = region.contains(ra, dec)
    assert expect.sum() > 100
    assert set(pre.objects["diaObjectId"].tolist()) == set(src["diaSourceId"][expect].tolist())
    assert np.all(np.diff(pre.objects["pixelId"]) >= 0)
    assert set(pre.sources["diaSourceId"].tolist()) == set(src["diaSourceId"][expect].tolist())
    # Values round-trip (float32 columns within float32 precision; NULL -> NaN).
    k = np.argsort(pre.sources["diaSourceId"])
    sel = np.flatnonzero(expect)
    np.testing.assert_allclose(pre.sources["psfFlux"][k], src["psfFlux"][sel], rtol=1e-6)
    np.testing.assert_array_equal(pre.sources["ra"][k], src["ra"][sel])
    assert np.isnan(pre.sources["trailFlux"]).all()
    np.testing.assert_array_equal(
        pre.objects["pixelId"], pixel_ids(pre.objects["ra"], pre.objects["dec"])
    )
    # The 12-month window: a preload two years later finds the objects but no history.
    late = await apdb.preload(region, MJD + 730.0)
    assert len(late.objects["diaObjectId"]) == expect.sum()
    assert len(late.sources["diaSourceId"]) == 0


async def test_new_version_replaces_last(apdb: Apdb) -> None:
    rng = np.random.default_rng(4)
    ra, dec = random_sky(rng, 20, 10.0, 10.0, 0.01)
    src = dia_sources(rng, ra, dec, 41, 6, MJD)
    src["diaObjectId"] = src["diaSourceId"].copy()
    obj = dia_objects_from_sources(src, MJD)
    await apdb.store(41, 6, src, obj)
    obj2 = {k: v.copy() for k, v in obj.items()}
    obj2["validityStartMjdTai"][:] = MJD + 1
    obj2["nDiaSources"][:] = 2
    src2 = dia_sources(rng, ra, dec, 42, 6, MJD + 1)
    src2["diaObjectId"] = obj["diaObjectId"].copy()
    await apdb.store(42, 6, src2, obj2)
    pre = await apdb.preload(Region.box(10.0, 10.0, 0.02), MJD + 2)
    assert len(pre.objects["diaObjectId"]) == 20
    assert set(pre.objects["nDiaSources"].tolist()) == {2}
    assert len(pre.sources["diaSourceId"]) == 40


async def _blocks(conn: asyncpg.Connection, schema: str, ids: list[int], start: float) -> list[int]:
    rows = await conn.fetch(
        f'SELECT ("ctid"::text::point)[0] AS block FROM "{schema}"."DiaObject"'
        ' WHERE "diaObjectId" = ANY($1::bigint[]) AND "validityStartMjdTai" = $2'
        ' ORDER BY "diaObjectId"',
        ids,
        start,
    )
    return [int(r["block"]) for r in rows]


async def test_an_existing_apdb_is_migrated_to_hot_version_updates(pg_dsn: str) -> None:
    """Migration 2 on an APDB filled under migration 1: the rows are kept, the pages get room,
    and closing a version is a HOT update: it stays on its page and adds no index entry."""
    schema = "apdb_test_hot"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        spec = store_spec()
        v1 = Store(spec.component, spec.migrations[:1], spec.code_version, spec.params)
        assert await migrate(conn, schema, v1) == [1]
        pool = await connect_pool(pg_dsn, max_size=2)
        rng = np.random.default_rng(11)
        ra, dec = random_sky(rng, 3000, 30.0, -20.0, 0.5)
        src = dia_sources(rng, ra, dec, 51, 2, MJD)
        src["diaObjectId"] = src["diaSourceId"].copy()
        obj = dia_objects_from_sources(src, MJD)
        try:
            await Apdb(pool, schema).store(51, 2, src, obj)  # full pages, as migration 1 made them
        finally:
            await pool.close()

        db = await Apdb.connect(pg_dsn, schema=schema)
        try:
            assert await db.schema_version() == 2
            options = await conn.fetch(
                "SELECT relname, reloptions FROM pg_class WHERE relnamespace = $1::regnamespace"
                " AND relname IN ('DiaObject', 'DiaObjectLast') ORDER BY relname",
                schema,
            )
            assert [r["reloptions"] for r in options] == [["fillfactor=70"], ["fillfactor=80"]]
            assert await db.count("DiaObjectLast") == 3000
            assert await conn.fetchval(f'SELECT count(*) FROM "{schema}"."DiaObject"') == 3000
            assert await db.schema_version() == 2  # a second connect applied nothing more
            again = await Apdb.connect(pg_dsn, schema=schema)
            await again.close()

            touched = np.arange(0, 3000, 10)  # one object in ten gets a new version
            ids = np.sort(obj["diaObjectId"][touched]).tolist()
            before = await _blocks(conn, schema, ids, MJD)
            src2 = dia_sources(rng, ra[touched], dec[touched], 52, 2, MJD + 1)
            src2["diaObjectId"] = obj["diaObjectId"][touched].copy()
            obj2 = {k: v[touched].copy() for k, v in obj.items()}
            obj2["validityStartMjdTai"][:] = MJD + 1
            obj2["nDiaSources"][:] = 2
            await db.store(52, 2, src2, obj2)
        finally:
            await db.close()
        closed = await conn.fetch(
            f'SELECT "validityEndMjdTai" FROM "{schema}"."DiaObject"'
            ' WHERE "diaObjectId" = ANY($1::bigint[]) AND "validityStartMjdTai" = $2',
            ids,
            MJD,
        )
        assert [r[0] for r in closed] == [MJD + 1] * len(ids)
        # Same block: the closing update was HOT (no indexed column changes, so an update that
        # stays on its page is a heap-only tuple).
        assert await _blocks(conn, schema, ids, MJD) == before
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def test_unreachable_database_is_retriable(tmp_path) -> None:
    dsn = f"postgresql://nobody@/nodb?host={tmp_path}&port=1"
    with pytest.raises(DatabaseUnavailableError) as info:
        await Apdb.connect(dsn, schema="x")
    assert isinstance(info.value, RetriableError)
    assert info.value.__cause__ is not None


def test_copy_decoding_reads_back_text_nulls_and_empty_streams() -> None:
    from base.apdb.copyread import decode_copy
    from base.apdb.copywrite import copy_payload

    table = sch.tables()["DiaSource"]
    rng = np.random.default_rng(5)
    ra, dec = random_sky(rng, 7, 10.0, 5.0, 0.1)
    src = dia_sources(rng, ra, dec, 41, 2, MJD)
    src["band"] = np.array(["g", "r", "", "i", "r", "longer-band", "g"], dtype=object)
    src["psfFlux"][3] = np.nan
    src["diaObjectId"][:] = [0, 5, 0, 7, 7, 9, 0]  # 0: no object (NULL-like id)
    short = copy_payload(table, src, 7)[1]  # the columns not given are left out of the rows
    for c in table.columns:
        if c.name not in src:
            src[c.name] = np.full(7, "" if c.kind == "str" else 0, dtype=c.np_type)
    _, payload = copy_payload(table, src, 7)
    back = decode_copy(payload, table)
    assert list(back) == table.names
    assert back["band"].tolist() == ["g", "r", "", "i", "r", "longer-band", "g"]
    assert back["band"].dtype == object
    np.testing.assert_array_equal(back["diaObjectId"], src["diaObjectId"])
    assert np.isnan(back["psfFlux"][3]) and np.isfinite(back["psfFlux"][[0, 1, 2, 4]]).all()
    np.testing.assert_array_equal(back["ra"], src["ra"])
    assert back["visit"].dtype == np.int64 and back["psfFlux"].dtype == np.float32
    empty = decode_copy(copy_payload(table, {k: v[:0] for k, v in src.items()}, 0)[1], table)
    assert all(len(v) == 0 for v in empty.values()) and empty["band"].dtype == object
    with pytest.raises(ValueError, match="not a PostgreSQL binary COPY stream"):
        decode_copy(b"garbage", table)
    with pytest.raises(ValueError, match="row 0 does not have the 104 fields of DiaSource"):
        decode_copy(short, table)
    with pytest.raises(ValueError, match="row 6 does not have"):
        decode_copy(payload[:-40], table)  # cut short inside the last row


async def test_a_preload_that_fails_raises_its_own_error(pg_dsn: str) -> None:
    """The three reads of a preload run at once; one failing raises its mapped dmcs error
    (what the Association's failure policy catches), not an exception group."""
    schema = "apdb_test_preload_fails"
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    db = await Apdb.connect(pg_dsn, schema=schema)
    try:
        await conn.execute(f'ALTER TABLE "{schema}"."DiaForcedSource" RENAME TO "gone"')
        with pytest.raises(DmcsError, match="APDB preload") as info:
            await db.preload(Region.box(200.0, -30.0, 0.2, pad_arcsec=10.0), MJD)
        assert not isinstance(info.value, BaseExceptionGroup)
    finally:
        await db.close()
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def _forced(src: dict[str, np.ndarray], visit: int, mjd: float) -> dict[str, np.ndarray]:
    n = len(src["ra"])
    return {
        "diaForcedSourceId": src["diaSourceId"] + 7,
        "diaObjectId": src["diaObjectId"],
        "ra": src["ra"],
        "dec": src["dec"],
        "visit": np.full(n, visit),
        "detector": src["detector"],
        "psfFlux": src["psfFlux"] * 0.9,
        "psfFluxErr": src["psfFluxErr"],
        "midpointMjdTai": np.full(n, mjd),
        "band": src["band"],
        "timeProcessedMjdTai": np.full(n, mjd),
    }


async def test_history_of_matched_objects_gives_the_full_preloads_association(
    apdb: Apdb,
) -> None:
    """Association against the objects alone, then the history of only the objects matched
    (``read_history``), gives the same sources, objects and summaries as association against
    a preload of every object's history, and that history is the matched objects' rows."""
    from algorithms.association_run import associate, match, summarize_matched

    rng = np.random.default_rng(61)
    ra, dec = random_sky(rng, 400, 230.0, 20.0, 0.1)
    ids = np.zeros(0, dtype=np.int64)
    # The first visit is outside the 12-month window of the visit below.
    for visit, mjd in ((61, MJD - 400.0), (62, MJD - 2.0), (63, MJD - 1.0)):
        src = dia_sources(rng, ra, dec, visit, 2, mjd)
        ids = ids if len(ids) else src["diaSourceId"].copy()
        src["diaObjectId"] = ids
        obj = dia_objects_from_sources(src, mjd)
        forced = _forced(src, visit, mjd)
        assert (await apdb.store(visit, 2, src, obj, forced_sources=forced)).stored
    region = Region.box(230.0, 20.0, 0.1, pad_arcsec=10.0)
    full = await apdb.preload(region, MJD)
    lean = await apdb.preload(region, MJD, history=False)
    for k, v in full.objects.items():
        np.testing.assert_array_equal(lean.objects[k], v)
    assert len(lean.sources["diaSourceId"]) == len(lean.forced_sources["diaObjectId"]) == 0
    assert set(lean.sources) == set(full.sources)
    # This visit: a third of the objects again, plus new sources away from them.
    k = rng.choice(len(ra), 130, replace=False)
    nra, ndec = random_sky(rng, 50, 230.0, 20.0, 0.1)
    src = dia_sources(rng, np.r_[ra[k], nra], np.r_[dec[k], ndec], 64, 2, MJD)
    want = associate(src, full.objects, full.sources, full.forced_sources, MJD)
    matched = match(src, lean.objects)
    assert 0 < len(matched.known) < len(full.objects["diaObjectId"]) // 2
    history, forced = await apdb.read_history(matched.known, MJD)
    on = np.isin(full.sources["diaObjectId"], matched.known)
    assert sorted(history["diaSourceId"].tolist()) == sorted(
        full.sources["diaSourceId"][on].tolist()
    )
    assert len(history["diaSourceId"]) == 2 * len(matched.known)  # the old visit is out
    assert len(forced["diaObjectId"]) == 2 * len(matched.known)
    got = summarize_matched(matched, history, forced, MJD)
    for part in ("sources", "objects"):
        a, b = getattr(want, part), getattr(got, part)
        assert set(a) == set(b)
        for name, v in a.items():
            np.testing.assert_array_equal(b[name], v, err_msg=f"{part}.{name}")
    assert (want.n_matched, want.n_new) == (got.n_matched, got.n_new)
    empty = await apdb.read_history(np.zeros(0, dtype=np.int64), MJD)
    assert all(len(t["diaObjectId"]) == 0 for t in empty)
