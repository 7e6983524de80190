"""Alerts end to end on a real PostgreSQL: APDB -> association -> Rubin Avro packets -> archive."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import fastavro
import numpy as np
import pytest
import pytest_asyncio
from astropy.io import fits
from astropy.wcs import WCS
from lsst.alert.packet import Schema

from algorithms.association_run import associate
from base.alerts import (
    AlertArchive,
    build_alerts,
    decode,
    latest_schema,
    serialize,
    unframe,
)
from base.alerts.fits import cutout_fits, tan_wcs
from base.apdb import Apdb, Region
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from state.errors import InvalidInputError, StorageError

SCHEMA = "apdb_test_alerts"
MJD = 60810.1
RA0, DEC0 = 120.0, -40.0


@dataclass
class Visit:
    sources: dict
    objects: dict
    history: dict
    ss_sources: dict
    packets: list[bytes]
    alerts: list[dict]


def _cutouts(sources: dict, rng: np.random.Generator) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    scale = 0.2 / 3600.0
    for ra, dec in zip(sources["ra"], sources["dec"], strict=True):
        wcs = tan_wcs(float(ra), float(dec), 15.5, 15.5, (-scale, 0.0, 0.0, scale))
        planes = []
        for kind in ("diff", "sci", "tmpl"):
            img = rng.normal(0, 10, (30, 30)).astype(np.float32)
            planes.append(
                cutout_fits(
                    img,
                    np.full((30, 30), 100.0),
                    np.zeros((30, 30)),
                    wcs,
                    {"BUNIT": "nJy", "PLANE": kind},
                )
            )
        out.append((planes[0], planes[1], planes[2]))
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def visit(pg_dsn: str) -> AsyncIterator[Visit]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    await conn.close()
    apdb = await Apdb.connect(pg_dsn, schema=SCHEMA)
    rng = np.random.default_rng(11)
    # Night 1: 150 objects founded. Night 2: 100 of them re-detected, 20 new, 1 asteroid.
    ra, dec = random_sky(rng, 150, RA0, DEC0, 0.05)
    first = dia_sources(rng, ra, dec, 100, 9, MJD, flux=np.full(150, 8000.0))
    first["diaObjectId"] = first["diaSourceId"].copy()
    await apdb.store(100, 9, first, dia_objects_from_sources(first, MJD))
    region = Region.box(RA0, DEC0, 0.06, pad_arcsec=20)
    pre = await apdb.preload(region, MJD + 1)
    jitter = rng.normal(0, 0.05 / 3600, (2, 100))
    ra_new, dec_new = random_sky(rng, 21, RA0, DEC0, 0.05)
    ra2 = np.r_[ra[:100] + jitter[0] / np.cos(np.radians(DEC0)), ra_new]
    dec2 = np.r_[dec[:100] + jitter[1], dec_new]
    second = dia_sources(rng, ra2, dec2, 101, 9, MJD + 1, band="g", flux=np.full(121, 6000.0))
    ss = {
        "ssObjectId": np.array([555], dtype=np.int64),
        "ra": ra2[120:121],
        "dec": dec2[120:121],
        "designation": np.array(["2026 QX"], dtype=object),
    }
    res = associate(
        second,
        pre.objects,
        pre.sources,
        pre.forced_sources,
        MJD + 1,
        ss_predictions=ss,
        object_pixels=pre.objects["pixelId"],
    )
    assert (await apdb.store(101, 9, res.sources, res.objects, ss_sources=res.ss_sources)).stored
    alerts = build_alerts(
        res.sources,
        res.objects,
        pre.sources,
        pre.forced_sources,
        res.ss_sources,
        _cutouts(res.sources, rng),
        observation_reason="wfd",
    )
    packets = serialize(alerts)
    yield Visit(res.sources, res.objects, pre.sources, res.ss_sources, packets, alerts)
    await apdb.close()


def test_every_alert_validates_against_rubin_schema(visit: Visit) -> None:
    schema = latest_schema()
    rubin = Schema.from_file()  # lsst-alert-packet's own reader and validator
    assert len(visit.packets) == len(visit.sources["diaSourceId"]) == 121
    for packet, alert in zip(visit.packets, visit.alerts, strict=True):
        schema_id, body = unframe(packet)
        assert packet[0] == 0 and schema_id == int.from_bytes(packet[1:5], "big") == 1101
        assert fastavro.validate(alert, schema.parsed)
        assert rubin.validate(alert)
        assert rubin.deserialize(body)["diaSourceId"] == alert["diaSourceId"]


def test_alerts_decode_back_to_what_was_stored(visit: Visit) -> None:
    decoded = [decode(p) for p in visit.packets]
    src = visit.sources
    for k, alert in enumerate(decoded):
        d = alert["diaSource"]
        assert d["diaSourceId"] == src["diaSourceId"][k]
        assert d["ra"] == src["ra"][k] and d["dec"] == src["dec"][k]  # doubles are exact
        assert d["psfFlux"] == pytest.approx(float(src["psfFlux"][k]), rel=1e-7)
        assert d["trailFlux"] is None  # NaN in the table is null in the alert
        assert alert["observation_reason"] == "wfd"
    moving = [a for a in decoded if a["ssSource"] is not None]
    assert len(moving) == 1 and moving[0]["ssSource"]["ssObjectId"] == 555
    assert moving[0]["diaObject"] is None and moving[0]["diaSource"]["ssObjectId"] == 555
    known = [a for a in decoded if a["prvDiaSources"]]
    assert len(known) == 100  # the re-detected objects carry their night-1 DIASource
    for a in known:
        assert a["diaObject"]["nDiaSources"] == 2
        assert a["diaObject"]["g_psfFluxNdata"] == 1 and a["diaObject"]["r_psfFluxNdata"] == 1
        assert [p["diaObjectId"] for p in a["prvDiaSources"]] == [a["diaObject"]["diaObjectId"]]
        assert a["prvDiaSources"][0]["midpointMjdTai"] == MJD
    new = [a for a in decoded if a["diaObject"] and not a["prvDiaSources"]]
    assert len(new) == 20 and all(a["diaObject"]["nDiaSources"] == 1 for a in new)


def test_cutouts_are_fits_with_wcs_variance_mask(visit: Visit) -> None:
    alert = decode(visit.packets[3])
    with fits.open(io.BytesIO(alert["cutoutDifference"])) as hdus:
        assert [h.name for h in hdus] == ["IMAGE", "VARIANCE", "MASK"]
        assert hdus[0].data.shape == (30, 30) and hdus[0].header["BUNIT"] == "nJy"
        assert np.all(hdus[1].data == 100.0) and hdus[2].data.dtype.kind == "i"
        ra, dec = WCS(hdus[0].header).all_pix2world([[14.5, 14.5]], 0)[0]
    assert ra == pytest.approx(alert["diaSource"]["ra"], abs=1e-9)
    assert dec == pytest.approx(alert["diaSource"]["dec"], abs=1e-9)


def test_decode_rejects_bad_frames(visit: Visit) -> None:
    with pytest.raises(InvalidInputError, match="magic byte"):
        decode(b"\x01" + visit.packets[0][1:])
    with pytest.raises(InvalidInputError, match="schema id 704"):
        decode(b"\x00" + (704).to_bytes(4, "big") + visit.packets[0][5:])
    with pytest.raises(InvalidInputError, match="shorter"):
        decode(b"\x00\x00")


@contextlib.asynccontextmanager
async def fresh_archive(dsn: str, root: Path, schema: str) -> AsyncIterator[AlertArchive]:
    """An alert archive on an empty ``schema`` (dropped first), closed afterwards."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()
    archive = await AlertArchive.open(dsn, root, schema=schema)
    try:
        yield archive
    finally:
        await archive.close()


async def test_archive_round_trip_by_id(visit: Visit, pg_dsn: str, tmp_path: Path) -> None:
    async with fresh_archive(pg_dsn, tmp_path, "alerts_test") as archive:
        ids = visit.sources["diaSourceId"].tolist()
        assert await archive.archive(20260101, 101, 9, ids[:60], visit.packets[:60])
        assert await archive.archive(20260101, 101, 10, ids[60:], visit.packets[60:])
        assert not await archive.archive(20260101, 101, 9, ids[:60], visit.packets[:60])
        for k in (0, 59, 60, 120):
            assert await archive.fetch_packet(ids[k]) == visit.packets[k]
            assert (await archive.fetch(ids[k]))["diaSourceId"] == ids[k]
        assert await archive.fetch(12345) is None
        # The nightly file is a standard Avro container holding every alert once.
        data = archive.path(20260101).read_bytes()
        stored = [r["diaSourceId"] for r in fastavro.reader(io.BytesIO(data))]
        assert stored == ids


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda data: b"junk" + data[4:], "bad magic"),
        (lambda data: data[:4] + b"\xff" * 12, "unreadable Avro header|sync marker"),
        (lambda data: data[:6], "unreadable Avro header|sync marker"),
    ],
)
async def test_a_damaged_archive_file_is_a_storage_error(
    visit: Visit, pg_dsn: str, tmp_path: Path, damage: Any, match: str
) -> None:
    async with fresh_archive(pg_dsn, tmp_path, "alerts_damaged") as archive:
        ids = visit.sources["diaSourceId"].tolist()
        assert await archive.archive(20260101, 101, 9, ids[:10], visit.packets[:10])
        path = archive.path(20260101)
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(StorageError, match=match):
            await archive.archive(20260101, 101, 10, ids[10:20], visit.packets[10:20])
        assert not await archive.fetch_packet(ids[10])
