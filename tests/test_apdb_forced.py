"""Forced photometry of undetected known DIAObjects (DiaForcedSource), stored by the APDB."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
import pytest_asyncio

from algorithms.wcs import TanSipWcs
from base.apdb import Apdb, Region
from base.apdb.forced import build_forced_sources
from base.apdb.simulate import dia_objects_from_sources, dia_sources
from state.errors import InvalidInputError

SCHEMA = "apdb_test_forced"
MJD = 60820.0
SHAPE = (300, 320)
SIGMA = 2.0


@pytest_asyncio.fixture(loop_scope="session")
async def apdb(pg_dsn: str) -> AsyncIterator[Apdb]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    await conn.close()
    db = await Apdb.connect(pg_dsn, schema=SCHEMA)
    yield db
    await db.close()


def _psf() -> np.ndarray:
    yy, xx = np.mgrid[-10:11, -10:11]
    p = np.exp(-(xx**2 + yy**2) / (2 * SIGMA**2))
    return p / p.sum()


def _scene() -> tuple[TanSipWcs, dict, np.ndarray, np.ndarray, np.ndarray]:
    """Ten known objects: 0-3 detected now, 4-7 undetected with known flux, 8-9 off the CCD."""
    wcs = TanSipWcs.simple((80.0, -20.0), (160.0, 150.0), 0.2)
    xs = np.array([30.5, 60.2, 90.7, 120.1, 50.3, 140.8, 230.4, 280.6, -40.0, 400.0])
    ys = np.array([40.2, 80.9, 120.3, 200.6, 250.1, 60.4, 150.7, 30.2, 100.0, 100.0])
    ra, dec = wcs.pixel_to_sky(xs, ys)
    rng = np.random.default_rng(5)
    src = dia_sources(rng, ra, dec, 800, 0, MJD - 10)
    src["diaObjectId"] = src["diaSourceId"].copy()
    objects = dia_objects_from_sources(src, MJD - 10)
    flux = np.array([0, 0, 0, 0, 6000.0, -2500.0, 1200.0, 0.0, 0, 0])
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    img = rng.normal(0, 5.0, SHAPE)
    for x, y, f in zip(xs[4:8], ys[4:8], flux[4:8], strict=True):
        img += (
            f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * SIGMA**2)) / (2 * np.pi * SIGMA**2)
        )
    return wcs, objects, img, np.full(SHAPE, 25.0), flux


async def test_forced_sources_for_undetected_objects_are_stored(apdb: Apdb) -> None:
    wcs, objects, img, var, flux = _scene()
    assert (await apdb.store(800, 0, {"ra": np.zeros(0)}, objects)).stored
    pre = await apdb.preload(Region.box(80.0, -20.0, 0.05), MJD)
    assert len(pre.objects["diaObjectId"]) == 10
    # This visit detected objects 0-3 (their DIASources carry their diaObjectId).
    ids = np.asarray(objects["diaObjectId"])
    detected = {"diaObjectId": np.r_[ids[:4], 0]}
    mask = np.zeros(SHAPE, dtype=np.int32)
    table = build_forced_sources(
        pre.objects, detected, wcs, (img, var, mask), _psf(),
        visit=801, detector=0, mjd=MJD, band="g", processed_mjd=MJD + 0.001,
    )  # fmt: skip
    order = np.argsort(table["diaObjectId"])
    assert table["diaObjectId"][order].tolist() == sorted(ids[4:8].tolist())
    want = dict(zip(ids[4:8].tolist(), flux[4:8].tolist(), strict=True))
    got_flux = np.array([want[i] for i in table["diaObjectId"].tolist()])
    assert np.all(np.abs(table["psfFlux"] - got_flux) < 4 * table["psfFluxErr"])
    assert len(np.unique(table["diaForcedSourceId"])) == 4
    assert np.isnan(table["scienceFlux"]).all()

    src = {"ra": np.zeros(0)}
    res = await apdb.store(801, 0, src, {}, forced_sources=table)
    assert res.stored and res.counts["DiaForcedSource"] == 4
    assert not (await apdb.store(801, 0, src, {}, forced_sources=table)).stored
    assert await apdb.count("DiaForcedSource") == 4
    again = await apdb.preload(Region.box(80.0, -20.0, 0.05), MJD + 1)
    fs = again.forced_sources
    assert sorted(fs["diaObjectId"].tolist()) == sorted(ids[4:8].tolist())
    k = np.argsort(fs["diaObjectId"])
    np.testing.assert_allclose(fs["psfFlux"][k], table["psfFlux"][order], rtol=1e-6)
    assert set(fs["band"].tolist()) == {"g"} and set(fs["visit"].tolist()) == {801}
    # Daytime maintenance (CLUSTER by pixelId) changes nothing a preload returns.
    await apdb.cluster()
    clustered = await apdb.preload(Region.box(80.0, -20.0, 0.05), MJD + 1)
    assert sorted(clustered.forced_sources["diaForcedSourceId"].tolist()) == sorted(
        fs["diaForcedSourceId"].tolist()
    )
    assert sorted(clustered.objects["diaObjectId"].tolist()) == sorted(ids.tolist())


def test_forced_sources_reject_bad_images() -> None:
    wcs, objects, img, var, _ = _scene()
    with pytest.raises(InvalidInputError, match="forced photometry of 5/1"):
        build_forced_sources(
            objects, {}, wcs, (img, var[:10], np.zeros(SHAPE)), _psf(),
            visit=5, detector=1, mjd=MJD, band="r", processed_mjd=MJD,
        )  # fmt: skip
