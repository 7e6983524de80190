"""Association partitioned by HEALPix tile: the same result as one Association, no duplicate
DiaObject across a partition border, the routing and the configuration that make the actors."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import numpy as np
import pytest
import pytest_asyncio

from algorithms.partition import REGION_ORDER, footprint_center, partition_of, region_of
from base.apdb import Apdb, Region
from base.apdb.outbox import decode
from base.apdb.region_lock import lock_keys, namespace
from base.apdb.simulate import dia_sources
from base.prompt.association_step import alert_handoff, associate_ccd, associate_ccds
from base.prompt.partitions import association_peer
from base.prompt.requests import CcdResults
from base.prompt.settings import AssociationSettings
from config.system import (
    ASSOCIATION_CLASS,
    PROCESSOR_CLASS,
    AssociationConfig,
    load_system_config,
    partitioned,
)
from state.errors import ConfigurationError, InvalidInputError

PARTITIONS = 3
MJD = 60800.1
HALF = 0.02  # CCD half-width, degrees (72″, about an lsstcam-lite CCD)
DITHERS = ((0.0, 0.0), (0.013, 0.007), (-0.011, 0.017))
VISITS = tuple(2026112100101 + i for i in range(len(DITHERS)))


# ------------------------------------------------------------------ pure
def border_ra(dec: float = 2.0, start: float = 150.0) -> float:
    """An RA where the partition (of a point's tile) changes along ``dec``."""
    first = partition_of(*_box(start, dec, 1e-5), PARTITIONS)
    for ra in np.arange(start, start + 1.0, 0.0005):
        if partition_of(*_box(float(ra), dec, 1e-5), PARTITIONS) != first:
            return float(ra)
    raise AssertionError("no partition border within a degree")


def _box(ra: float, dec: float, h: float = HALF) -> tuple[tuple[float, ...], tuple[float, ...]]:
    r = Region.box(ra, dec, h)
    return r.ra, r.dec


def test_footprint_center_of_a_box_across_ra_zero() -> None:
    ra, dec = _box(359.99, -30.0)
    assert max(ra) > 359 and min(ra) < 1, "the box straddles RA 0"
    assert footprint_center(ra, dec) == pytest.approx((359.99, -30.0), abs=1e-9)
    with pytest.raises(ValueError, match="vertices"):
        footprint_center([], [])


def test_partition_of_a_ccd_is_its_centre_tile_dealt_round() -> None:
    ra, dec = _box(150.0, 2.0)
    tile = region_of(ra, dec)
    assert tile == region_of(ra, dec, REGION_ORDER)
    assert partition_of(ra, dec, 1) == 0
    assert partition_of(ra, dec, 5) == tile % 5
    with pytest.raises(ValueError, match="at least one partition"):
        partition_of(ra, dec, 0)
    # A visit's footprint (3.5°) spans many tiles, so every partition gets CCDs.
    grid = [
        (150 + x, 2 + y) for x in np.arange(-1.7, 1.7, 0.25) for y in np.arange(-1.7, 1.7, 0.25)
    ]
    assert {partition_of(*_box(r, d), 4) for r, d in grid} == {0, 1, 2, 3}


def test_association_peer_routes_by_tile_and_sends_bad_footprints_to_partition_0() -> None:
    ra, dec = _box(150.0, 2.0)
    wire = {"footprint_ra": ra, "footprint_dec": dec}
    k = partition_of(ra, dec, PARTITIONS)
    assert association_peer("Association", PARTITIONS, wire) == (
        "Association" if k == 0 else f"Association{k}"
    )
    assert association_peer("Association", 1, {}) == "Association"
    assert association_peer("Association", PARTITIONS, {"footprint_ra": "x"}) == "Association"


def test_partitioned_config_makes_one_actor_per_partition(tmp_path: Path) -> None:
    one = load_system_config()
    assert [c.name for c in one.components if c.cls == ASSOCIATION_CLASS] == ["Association"]
    three = partitioned(one.model_copy(update={"association": AssociationConfig(partitions=3)}))
    parts = [c for c in three.components if c.cls == ASSOCIATION_CLASS]
    assert [c.name for c in parts] == ["Association", "Association1", "Association2"]
    assert [(c.settings["partition"], c.settings["partitions"]) for c in parts] == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    for c in parts:
        AssociationSettings.model_validate(c.settings)
    processors = [c for c in three.components if c.cls == PROCESSOR_CLASS]
    assert processors and all(c.settings["association_partitions"] == 3 for c in processors)
    assert partitioned(three) == three, "partitioning twice changes nothing"
    # From the system file, as `dmcs run` and `dmcs replay` read it.
    text = Path(one.gateway.tokens_file).parent.joinpath("system.toml").read_text()
    path = tmp_path / "system.toml"
    assert "\n[association]\npartitions = 1\n" in text, "the default file names the setting"
    path.write_text(text.replace("partitions = 1\n", "partitions = 2\n"))
    (tmp_path / "tokens.toml").write_text('[tokens]\n"t" = "ocs"\n')
    names = [c.name for c in load_system_config(path).components if c.cls == ASSOCIATION_CLASS]
    assert names == ["Association", "Association1"]
    path.write_text(text.replace("partitions = 1\n", "partitions = 0\n"))
    with pytest.raises(ConfigurationError, match="partitions"):
        load_system_config(path)
    with pytest.raises(ValueError, match="partition 2 of 2 does not exist"):
        AssociationSettings(partition=2, partitions=2)


def test_lock_keys_overlap_exactly_when_the_regions_can() -> None:
    a = lock_keys(Region(*_box(150.0, 2.0), 10.0))
    near = lock_keys(Region(*_box(150.0 + 2 * HALF, 2.0), 10.0))  # edges touch
    far = lock_keys(Region(*_box(151.0, 2.0), 10.0))
    assert a == sorted(a) and 1 <= len(a) <= 64
    assert set(a) & set(near)
    assert not set(a) & set(far)


# ------------------------------------------------------------------ with the APDB
async def _fresh(pg_dsn: str, schema: str) -> Apdb:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
    return await Apdb.connect(pg_dsn, schema=schema, max_size=4)


@pytest_asyncio.fixture
async def apdbs(pg_dsn: str) -> AsyncIterator[Callable[[str], asyncpg.Pool]]:
    """Opens Apdb connections (each as an Association actor has its own); closes them."""
    opened: list[Apdb] = []

    async def open_(schema: str, fresh: bool = False) -> Apdb:
        db = await (_fresh(pg_dsn, schema) if fresh else Apdb.connect(pg_dsn, schema, max_size=4))
        opened.append(db)
        return db

    yield open_
    for db in opened:
        await db.close()


def ccd(visit: int, detector: int, ra0: float, dec0: float, ra: np.ndarray, dec: np.ndarray):
    """One CCD's results: the stars inside its footprint, measured with 0.05″ noise."""
    rng = np.random.default_rng([visit % 1000, detector])
    fra, fdec = _box(ra0, dec0)
    inside = Region(fra, fdec).contains(ra, dec)
    noise = rng.normal(0.0, 0.05 / 3600, (2, int(inside.sum())))
    mjd = MJD + (visit % 1000) * 0.0005
    src = dia_sources(
        rng,
        ra[inside] + noise[0] / np.cos(np.radians(dec[inside])),
        dec[inside] + noise[1],
        visit,
        detector,
        mjd,
        flux=np.full(int(inside.sum()), 8000.0),
    )
    return CcdResults(visit, detector, "r", 20261121, mjd, fra, fdec, src, [], None, {})


def night(ra_b: float) -> list[CcdResults]:
    """Three dithered visits of a 3×3 CCD mosaic centred on a partition border, over a
    jittered grid of stars 22″ apart (so every match is unambiguous), each star seen in a
    visit with probability 0.9 (later visits found objects too)."""
    rng = np.random.default_rng(17)
    g = np.arange(-0.1, 0.1, 0.006)
    ra, dec = (a.ravel() for a in np.meshgrid(ra_b + g, 2.0 + g))
    ra = ra + rng.uniform(-3, 3, ra.size) / 3600
    dec = dec + rng.uniform(-3, 3, dec.size) / 3600
    out = []
    for visit, (dx, dy) in zip(VISITS, DITHERS, strict=True):
        seen = rng.random(ra.size) < 0.9
        for i in range(9):
            ra0 = ra_b + dx + (i % 3 - 1) * 0.05
            dec0 = 2.0 + dy + (i // 3 - 1) * 0.05
            out.append(ccd(visit, i, ra0, dec0, ra[seen], dec[seen]))
    return out


async def _run(apdb: Apdb, ccds: list[CcdResults], exclusive: bool) -> None:
    handoff = functools.partial(alert_handoff, min_reliability=None)
    for c in ccds:
        done = await associate_ccd(
            apdb, c, AssociationSettings(), handoff=handoff, exclusive=exclusive
        )
        assert done.stored


async def _links(pg_dsn: str, schema: str) -> dict[str, object]:
    """What association decided: the DIASources grouped by DiaObject, the objects, the alerts."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        links = await conn.fetch(f'SELECT "diaSourceId", "diaObjectId" FROM "{schema}"."DiaSource"')
        objects = await conn.fetch(
            f'SELECT "diaObjectId", ra, dec, "nDiaSources" FROM "{schema}"."DiaObjectLast"'
        )
        outbox = await conn.fetch(
            f'SELECT visit, detector, meta::text AS meta, payload FROM "{schema}".alert_outbox'
        )
    finally:
        await conn.close()
    of = {int(r[0]): int(r[1]) for r in links}
    groups: dict[int, set[int]] = {}
    for s, o in of.items():
        groups.setdefault(o, set()).add(s)
    group_of = {s: frozenset(groups[o]) for s, o in of.items()}
    where = {
        frozenset(groups[int(r[0])]): (round(r[1], 8), round(r[2], 8), r[3])
        for r in objects
        if int(r[0]) in groups
    }
    alerts = {}
    for r in outbox:
        h = decode(r["meta"], r["payload"])
        ids = h["sources"]["diaSourceId"].tolist()
        alerted_objects = h["sources"]["diaObjectId"].tolist()
        assert [of[s] for s in ids] == alerted_objects, "alerts link as the APDB does"
        alerts[(r["visit"], r["detector"])] = {s: group_of[s] for s in ids}
    return {
        "groups": set(group_of.values()),
        "objects": where,
        "nObjects": len(objects),
        "alerts": alerts,
    }


async def test_partitioned_association_equals_one_association(pg_dsn: str, apdbs) -> None:
    """The same CCDs through one Association (in arrival order) and through three partitions
    at once (each its own APDB connections, region locks on): the same DiaObjects, the same
    DIASource→DiaObject links, the same alerts."""
    ccds = night(border_ra())
    routed = [partition_of(c.footprint_ra, c.footprint_dec, PARTITIONS) for c in ccds]
    assert len(set(routed)) >= 2, "the mosaic spans partitions"
    single = await apdbs("apdb_part_single", fresh=True)
    await _run(single, ccds, exclusive=False)
    await apdbs("apdb_part_multi", fresh=True)
    actors = [await apdbs("apdb_part_multi") for _ in range(PARTITIONS)]
    queues = [[c for c, k in zip(ccds, routed, strict=True) if k == p] for p in range(PARTITIONS)]
    await asyncio.gather(*(_run(a, q, True) for a, q in zip(actors, queues, strict=True)))
    one = await _links(pg_dsn, "apdb_part_single")
    many = await _links(pg_dsn, "apdb_part_multi")
    assert one["nObjects"] == len(one["groups"]), "every DiaObject has its DIASources"
    assert many["nObjects"] == one["nObjects"]
    assert many["groups"] == one["groups"]
    assert many["objects"].keys() == one["objects"].keys()
    for group, (ra, dec, n) in one["objects"].items():
        assert many["objects"][group] == (
            pytest.approx(ra, abs=1e-7),
            pytest.approx(dec, abs=1e-7),
            n,
        )
    assert many["alerts"] == one["alerts"]
    assert sum(len(a) for a in one["alerts"].values()) == sum(len(g) for g in one["groups"])
    multi_visit = [g for g in one["groups"] if len(g) > 1]
    assert len(multi_visit) > len(one["groups"]) // 2, "most stars were matched across visits"


async def test_a_source_on_a_partition_border_makes_one_diaobject(pg_dsn: str, apdbs) -> None:
    """A star on a tile border, seen by a CCD of one partition and, in the next visit, by a
    CCD of the neighbouring partition, both associated at the same moment: one DiaObject."""
    ra_b = border_ra(dec=-20.0, start=60.0)
    star_ra, star_dec = np.array([ra_b]), np.array([-20.0])
    off = 30 / 3600 / np.cos(np.radians(20.0))
    x = ccd(VISITS[0], 0, ra_b - off, -20.0, star_ra, star_dec)
    y = ccd(VISITS[1], 1, ra_b + off, -20.0, star_ra, star_dec)
    assert len(x.sources["ra"]) == len(y.sources["ra"]) == 1
    px = partition_of(x.footprint_ra, x.footprint_dec, PARTITIONS)
    py = partition_of(y.footprint_ra, y.footprint_dec, PARTITIONS)
    assert px != py, "the two CCDs belong to different partitions"
    await apdbs("apdb_part_border", fresh=True)
    a, b = await apdbs("apdb_part_border"), await apdbs("apdb_part_border")
    await asyncio.gather(_run(a, [x], True), _run(b, [y], True))
    links = await _links(pg_dsn, "apdb_part_border")
    assert links["nObjects"] == 1
    assert links["groups"] == {
        frozenset({int(x.sources["diaSourceId"][0]), int(y.sources["diaSourceId"][0])})
    }


async def test_a_region_lock_lets_its_keys_go_on_exit_error_and_cancel(apdbs, pg_dsn) -> None:
    """The APDB pool does not reset a released connection (no round trip per release): the
    region lock lets its advisory locks go itself, after the block, after an error in it,
    and when cancelled while it waits for a key another session holds."""
    schema = "apdb_part_unlock"
    await apdbs(schema, fresh=True)
    a = await apdbs(schema)
    region = Region(*_box(61.0, -21.0), 10.0)
    ns = namespace(schema)
    conn = await asyncpg.connect(pg_dsn)

    async def held() -> int:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1"
            " AND pid <> pg_backend_pid()",
            ns % (1 << 32),
        )

    async def hold_a_while() -> None:
        async with a.region_lock(region):
            await asyncio.sleep(30)

    try:
        async with a.region_lock(region):
            assert await held() == len(lock_keys(region))
        assert await held() == 0
        with pytest.raises(RuntimeError, match="inside"):
            async with a.region_lock(region):
                raise RuntimeError("inside")
        assert await held() == 0
        await conn.execute("SELECT pg_advisory_lock($1, $2)", ns, lock_keys(region)[-1])
        waiting = asyncio.ensure_future(hold_a_while())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await held() == 0
        await conn.execute("SELECT pg_advisory_unlock_all()")
        async with a.region_lock(region):  # every key is free again
            assert await held() == len(lock_keys(region))
    finally:
        await conn.close()


async def test_a_ccd_waits_for_the_region_a_neighbour_holds(apdbs) -> None:
    """A CCD whose padded footprint overlaps a held region waits for its release; one that
    fails inside its lock (bad DIASources) releases it with the error, storing nothing."""
    await apdbs("apdb_part_lock", fresh=True)
    a, b = await apdbs("apdb_part_lock"), await apdbs("apdb_part_lock")
    stars = np.array([60.0, 60.001]), np.array([-20.0, -20.001])
    c = ccd(VISITS[0], 0, 60.0, -20.0, *stars)
    async with a.region_lock(Region(*_box(60.0 + 2 * HALF, -20.0), 10.0)):
        waiting = asyncio.ensure_future(_run(b, [c], True))
        done, _ = await asyncio.wait([waiting], timeout=1.0)
        assert not done, "the CCD waits while its neighbour holds the shared sky"
    await asyncio.wait_for(waiting, 30)
    bad = ccd(VISITS[1], 0, 60.0, -20.0, *stars)
    del bad.sources["psfFlux"]
    with pytest.raises(InvalidInputError, match=f"visit {VISITS[1]} detector 0"):
        await _run(a, [bad], True)
    assert not await a.is_stored(VISITS[1], 0)
    again = ccd(VISITS[2], 0, 60.0, -20.0, *stars)
    await asyncio.wait_for(_run(b, [again], True), 30)


# ------------------------------------------------------------------ group commit
async def _run_batched(apdb: Apdb, ccds: list[CcdResults], size: int, exclusive: bool) -> list:
    handoff = functools.partial(alert_handoff, min_reliability=None)
    out = []
    for k in range(0, len(ccds), size):
        out += await associate_ccds(
            apdb, ccds[k : k + size], AssociationSettings(), handoff=handoff, exclusive=exclusive
        )
    return out


async def _ledger_xmins(pg_dsn: str, schema: str) -> dict[tuple[int, int], int]:
    """The transaction that wrote each CCD's ledger row."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            f'SELECT visit, detector, xmin::text::bigint AS x FROM "{schema}".apdb_visit_detector'
        )
    finally:
        await conn.close()
    return {(r[0], r[1]): r[2] for r in rows}


async def test_a_batch_stored_in_one_transaction_equals_one_ccd_at_a_time(
    pg_dsn: str, apdbs
) -> None:
    """Group commit: the same CCDs stored in batches of 5 (one transaction each, region locks
    of the transaction, each CCD's preload seeing the batch's earlier CCDs) and, partitioned
    three ways, batched in every partition at once, give what one CCD at a time gives: the
    same DiaObjects, links and alerts."""
    ccds = night(border_ra())
    single = await apdbs("apdb_gc_single", fresh=True)
    await _run(single, ccds, exclusive=False)
    batched = await apdbs("apdb_gc_batched", fresh=True)
    done = await _run_batched(batched, ccds, 5, exclusive=False)
    assert all(d.stored for d in done)
    xmins = await _ledger_xmins(pg_dsn, "apdb_gc_batched")
    first = [xmins[(c.visit, c.detector)] for c in ccds[:5]]
    assert len(set(first)) == 1, "a batch is one transaction"
    assert len(set(xmins.values())) == -(-len(ccds) // 5)
    await apdbs("apdb_gc_multi", fresh=True)
    routed = [partition_of(c.footprint_ra, c.footprint_dec, PARTITIONS) for c in ccds]
    actors = [await apdbs("apdb_gc_multi") for _ in range(PARTITIONS)]
    queues = [[c for c, k in zip(ccds, routed, strict=True) if k == p] for p in range(PARTITIONS)]
    await asyncio.gather(
        *(_run_batched(a, q, 4, True) for a, q in zip(actors, queues, strict=True))
    )
    one = await _links(pg_dsn, "apdb_gc_single")
    for schema in ("apdb_gc_batched", "apdb_gc_multi"):
        got = await _links(pg_dsn, schema)
        assert got["nObjects"] == one["nObjects"] == len(one["groups"])
        assert got["groups"] == one["groups"]
        assert got["alerts"] == one["alerts"]
        for group, (ra, dec, n) in one["objects"].items():
            assert got["objects"][group] == (
                pytest.approx(ra, abs=1e-7),
                pytest.approx(dec, abs=1e-7),
                n,
            )
    # Two visits of one spot in one batch: the second matches what the first founded.
    pair = [c for c in ccds if c.detector == 4][:2]
    assert pair[0].visit != pair[1].visit
    together = await apdbs("apdb_gc_pair", fresh=True)
    first, second = await _run_batched(together, pair, 2, exclusive=True)
    assert len(set((await _ledger_xmins(pg_dsn, "apdb_gc_pair")).values())) == 1
    assert second.result.n_matched > 0 and first.result.n_matched == 0
    alone = await apdbs("apdb_gc_pair_ref", fresh=True)
    await _run(alone, pair, exclusive=False)
    assert (await _links(pg_dsn, "apdb_gc_pair")) == (await _links(pg_dsn, "apdb_gc_pair_ref"))
    # A batch repeated stores nothing and says so, CCD by CCD.
    again = await _run_batched(batched, ccds[:5], 5, exclusive=False)
    assert [d.stored for d in again] == [False] * 5
    assert (await _links(pg_dsn, "apdb_gc_batched"))["groups"] == one["groups"]


async def test_a_failure_mid_batch_loses_and_duplicates_nothing(pg_dsn: str, apdbs) -> None:
    """A malformed CCD in the middle of a batch: the batch's transaction is rolled back and
    its CCDs are stored one at a time: the others once each (one ledger row, one outbox row,
    no DIASource twice), the malformed one refused and not stored."""
    ccds = night(border_ra())[:9]
    bad = ccds[4]
    bad.sources = {k: v for k, v in bad.sources.items() if k != "ra"}
    apdb = await apdbs("apdb_gc_fail", fresh=True)
    done = await _run_batched(apdb, ccds, 9, exclusive=True)
    assert isinstance(done[4], InvalidInputError)
    assert all(d.stored for i, d in enumerate(done) if i != 4)
    xmins = await _ledger_xmins(pg_dsn, "apdb_gc_fail")
    assert sorted(xmins) == sorted((c.visit, c.detector) for i, c in enumerate(ccds) if i != 4)
    assert len(set(xmins.values())) == 8, "stored one at a time after the batch failed"
    links = await _links(pg_dsn, "apdb_gc_fail")
    n_src = sum(len(c.sources["diaSourceId"]) for i, c in enumerate(ccds) if i != 4)
    assert sum(len(g) for g in links["groups"]) == n_src
    assert sorted(links["alerts"]) == sorted(xmins)
    good = await apdbs("apdb_gc_fail_ref", fresh=True)
    await _run(good, [c for i, c in enumerate(ccds) if i != 4], exclusive=False)
    assert links["groups"] == (await _links(pg_dsn, "apdb_gc_fail_ref"))["groups"]


async def test_apdb_stored_is_the_commit_after_every_write(
    pg_dsn: str, apdbs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``apdbStored`` was stamped as the alert outbox row was written: before the CCD's
    DiaObject versions were written, and in a batch before the later CCDs were associated
    and the batch committed, so the stage could precede the data being visible. Now it is
    taken after the transaction's last write (one time for a batch), and the outbox row the
    AlertPublisher reads carries that same time."""
    import base.apdb.store
    from state.clock import tai_now

    written: list[float] = []
    write = base.apdb.store.write_versions

    async def timed(*args: object, **kwargs: object) -> None:
        await write(*args, **kwargs)
        written.append(tai_now())

    monkeypatch.setattr(base.apdb.store, "write_versions", timed)
    ccds = night(border_ra())[:4]
    apdb = await apdbs("apdb_stamp", fresh=True)
    await _run(apdb, ccds[:1], exclusive=False)  # its own transaction
    assert len(written) == 1 and ccds[0].stages["apdbStored"] >= written[0]
    assert all(d.stored for d in await _run_batched(apdb, ccds[1:], 3, exclusive=False))
    assert len(written) == 4
    batch = {c.stages["apdbStored"] for c in ccds[1:]}
    assert len(batch) == 1, "one commit, one apdbStored"
    assert batch.pop() >= written[-1] > max(c.stages["associated"] for c in ccds[1:])
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch('SELECT visit, detector, meta FROM "apdb_stamp".alert_outbox')
    finally:
        await conn.close()
    carried = {(r["visit"], r["detector"]): json.loads(r["meta"])["stages"] for r in rows}
    assert carried == {(c.visit, c.detector): c.stages for c in ccds}
