"""The per-CCD adapter on a simulated ``mini`` night: preload, process, and bad input.

The night is the ``mini`` camera pointed near the Galactic centre (the only place where a
102″ CCD holds the ≥ 5 reference stars an astrometric fit needs); bad inputs are made by
editing copies of its files.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from algorithms.diasource import DIASOURCE_DTYPE
from algorithms.wcs import TanSipWcs
from base.ccd_inputs import CalibPaths, CcdRepository, NightDirectoryRepository, read_raw
from base.ccd_processing import CcdOutputs, CcdProcessing, Preloaded
from state.errors import InvalidInputError
from summit.schedule import Visit, read_schedule

DETECTORS = range(4)


@pytest.fixture(scope="module")
def night(dense_mini_night: Path) -> Path:
    return dense_mini_night


def _visits(night: Path) -> tuple[Visit, ...]:
    return read_schedule(night / "schedule.sqlite")


def _info(v: Visit) -> dict[str, Any]:
    """The ``nextVisit`` payload fields the adapter reads (docs/events.md)."""
    return {"visit": v.visit_id, "camera": "mini", "band": v.band, "ra": v.ra, "dec": v.dec,
            "rotSkyPos": v.rot_sky_pos, "fieldId": v.field_id, "startMjd": v.mjd_start,
            "exposureTime": v.exptime, "detectors": list(DETECTORS)}  # fmt: skip


@pytest.fixture(scope="module")
def processed(night: Path) -> list[tuple[Preloaded, CcdOutputs]]:
    repo = NightDirectoryRepository(night)
    adapter = CcdProcessing(repo)
    out = []
    for v in _visits(night):
        for det in DETECTORS:
            pre = adapter.preload(_info(v), det)
            raw = repo.get_raw(v.visit_id, det)
            assert raw is not None
            out.append((pre, adapter.process(raw, pre)))
    return out


def _true_wcs(night: Path, visit: int, detector: int) -> TanSipWcs:
    with sqlite3.connect(night / "truth.sqlite") as db:
        (text,) = db.execute(
            "SELECT true_wcs FROM exposures WHERE visit = ? AND detector = ?", (visit, detector)
        ).fetchone()
    return TanSipWcs.from_header(json.loads(text))


def test_repository_protocol_and_paths(night: Path) -> None:
    repo = NightDirectoryRepository(night)
    assert isinstance(repo, CcdRepository)
    v = _visits(night)[0]
    assert repo.get_raw(v.visit_id, 1) is not None and repo.get_raw(v.visit_id, 9) is None
    calibs = repo.get_calibs(1, v.band, v.mjd_start)
    assert all(getattr(calibs, f) is not None for f in ("bias", "dark", "flat", "bpm"))
    assert repo.get_calibs(1, "y", v.mjd_start).flat is None
    assert repo.get_template(v.field_id, v.band, 1) is not None
    assert repo.get_template(v.field_id + 99, v.band, 1) is None
    with pytest.raises(InvalidInputError, match="manifest"):
        NightDirectoryRepository(night / "calibs")


def test_preload_reads_everything_but_the_raw(night: Path) -> None:
    adapter = CcdProcessing(NightDirectoryRepository(night))
    pre = adapter.preload(_info(_visits(night)[0]), 2)
    assert pre.flags == []
    assert pre.calibs.bias is not None and pre.calibs.bias.shape == (512, 512)
    assert pre.calibs.crosstalk is not None and pre.calibs.crosstalk.shape == (2, 2)  # mini2
    assert pre.calibs.defects is not None and pre.calibs.defects.dtype == bool
    assert pre.template is not None and pre.template.psf.shape == (41, 41)
    assert len(pre.refcat.ra) >= 5 and np.all(pre.refcat.flux > 0)
    with pytest.raises(InvalidInputError, match="nextVisit"):
        adapter.preload({"visit": 1}, 2)
    with pytest.raises(InvalidInputError, match="nextVisit"):
        adapter.preload({**_info(_visits(night)[0]), "camera": "nosuch"}, 2)
    with pytest.raises(InvalidInputError, match="nextVisit"):
        adapter.preload(_info(_visits(night)[0]), 17)


def test_processing_outputs_against_truth(
    night: Path, processed: list[tuple[Preloaded, CcdOutputs]]
) -> None:
    good = [(p, o) for p, o in processed if o.ok]
    assert len(good) >= 4
    for pre, o in good:
        s = o.summary
        assert 30.0 < s["zeropoint"] < 34.0
        assert 0.6 < s["psf_fwhm_arcsec"] < 1.3
        assert s["astrometric_scatter_mas"] < 50.0 and s["n_sources"] >= 5
        assert s["sky_level_electrons"] > 100 and s["template_coverage"] > 0.99
        assert 0.0 <= s["diff_model_error"] < 0.1 and 0.0 <= s["diff_psf_flux_model_error"] < 0.1
        assert s["psf_width_n_stars"] >= 8 and 0.0 <= s["psf_width_gradient"] < 0.1
        assert o.diasources.dtype == DIASOURCE_DTYPE and o.summary["n_diasources"] == len(
            o.diasources
        )
        assert set(o.stages) == {"isrDone", "differenceDone", "diaSourcesMeasured"}
        assert pre.preload_tai <= o.stages["isrDone"] <= o.stages["differenceDone"]
        assert o.stages["differenceDone"] <= o.stages["diaSourcesMeasured"]
        assert o.timings["total"] > 0 and o.cpu_timings["total"] > 0
        assert o.background is not None and o.wcs is not None
        fitted, truth = TanSipWcs.from_header(o.wcs), _true_wcs(night, o.visit, o.detector)
        xx, yy = np.meshgrid(np.linspace(0, 511, 9), np.linspace(0, 511, 9))
        ra1, dec1 = fitted.pixel_to_sky(xx.ravel(), yy.ravel())
        ra2, dec2 = truth.pixel_to_sky(xx.ravel(), yy.ravel())
        d = np.hypot((ra1 - ra2) * np.cos(np.deg2rad(dec2)), dec1 - dec2) * 3.6e6
        assert np.sqrt(np.mean(d**2)) < 50.0
    for _pre, o in processed:
        assert len(o.cutouts) == len(o.diasources)
        for row, stamps in zip(o.diasources, o.cutouts, strict=True):
            assert set(stamps) == {"science", "template", "difference"}
            with fits.open(io.BytesIO(stamps["difference"])) as h:
                assert h[0].header["DIASRCID"] == row["diaSourceId"]
                assert {"IMAGE", "MASK", "VARIANCE"} <= {x.name for x in h}
                assert 30 <= h["IMAGE"].data.shape[0] <= 102
    bad = [o for _, o in processed if not o.ok]
    assert all(o.reason for o in bad)


def _raw_hdul(night: Path, det: int = 2) -> tuple[fits.HDUList, Preloaded, CcdProcessing]:
    repo = NightDirectoryRepository(night)
    adapter = CcdProcessing(repo)
    v = _visits(night)[0]
    pre = adapter.preload(_info(v), det)
    path = repo.get_raw(v.visit_id, det)
    assert path is not None
    with fits.open(path) as h:
        copy = fits.HDUList([x.copy() for x in h])
    return copy, pre, adapter


def test_nan_pixels_are_flagged_and_masked(night: Path) -> None:
    h, pre, adapter = _raw_hdul(night)
    data = h[1].data.astype(np.float32)
    data[40:60, 30:200] = np.nan
    h[1].data = data
    o = adapter.process(h, pre)
    assert any(f.startswith("nan_pixels:") for f in o.flags)
    assert o.summary["n_diasources"] == len(o.diasources)


@pytest.mark.parametrize("level", ["zero", "saturated"])
def test_all_zero_or_saturated_image(night: Path, level: str) -> None:
    h, pre, adapter = _raw_hdul(night)
    for x in h[1:]:
        x.data = (
            np.zeros_like(x.data) if level == "zero" else np.full_like(x.data, x.header["SATURATE"])
        )
    o = adapter.process(h, pre)
    assert not o.ok and len(o.diasources) == 0
    assert ("all_zero" if level == "zero" else "saturated_image") in o.reason


def test_missing_amplifier(night: Path) -> None:
    h, pre, adapter = _raw_hdul(night)
    del h["C01"]
    o = adapter.process(h, pre)
    assert "missing_amplifier_hdu:C01" in o.flags and "missing_amplifier:C01" in o.flags
    assert o.reason


def test_template_that_does_not_cover(night: Path, tmp_path: Path) -> None:
    copy = tmp_path / "night"
    shutil.copytree(night, copy, ignore=shutil.ignore_patterns("raws"))
    v = _visits(night)[0]
    tpath = NightDirectoryRepository(copy).get_template(v.field_id, v.band, 2)
    assert tpath is not None
    with fits.open(tpath) as h:
        hdus = fits.HDUList([x.copy() for x in h])
    hdus["IMAGE"].header["CRVAL2"] += 0.05
    hdus.writeto(tpath, overwrite=True)
    adapter = CcdProcessing(NightDirectoryRepository(copy))
    pre = adapter.preload(_info(v), 2)
    raw = NightDirectoryRepository(night).get_raw(v.visit_id, 2)
    assert raw is not None
    o = adapter.process(raw, pre)
    assert not o.ok and "template_insufficient_coverage" in o.reason


class _FewStars(NightDirectoryRepository):
    def __init__(self, root: Path, refcat: Path) -> None:
        super().__init__(root)
        self.refcat = refcat

    def get_refcat(self) -> Path | None:
        return self.refcat


def test_too_few_reference_stars(night: Path, tmp_path: Path) -> None:
    few = tmp_path / "refcat.sqlite"
    with sqlite3.connect(few) as db, sqlite3.connect(night / "truth.sqlite") as src:
        db.execute("CREATE TABLE objects (object_id, kind, ra, dec, u, g, r, i, z, y)")
        rows = src.execute(
            "SELECT object_id, kind, ra, dec, u, g, r, i, z, y FROM objects WHERE kind = 'star'"
            " ORDER BY r LIMIT 400"
        ).fetchall()
        db.executemany("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)", rows[:2])
    v = _visits(night)[0]
    adapter = CcdProcessing(_FewStars(night, few))
    pre = adapter.preload(_info(v), 2)
    assert any(f.startswith("too_few_reference_stars") for f in pre.flags)
    raw = NightDirectoryRepository(night).get_raw(v.visit_id, 2)
    assert raw is not None
    o = adapter.process(raw, pre)
    assert not o.ok and "too_few_reference_stars" in o.reason
    assert any(f.startswith("astrometry_failed") for f in o.flags)


class _NoCalibs(NightDirectoryRepository):
    def get_calibs(self, detector: int, band: str, time: float) -> CalibPaths:
        return CalibPaths()


def test_missing_calibrations_are_flagged(night: Path) -> None:
    v = _visits(night)[0]
    adapter = CcdProcessing(_NoCalibs(night))
    pre = adapter.preload(_info(v), 2)
    assert {f"missing_calib:{n}" for n in ("bias", "dark", "flat", "bpm", "crosstalk")} <= set(
        pre.flags
    )
    raw = NightDirectoryRepository(night).get_raw(v.visit_id, 2)
    assert raw is not None
    o = adapter.process(raw, pre)
    assert "missing_calib:flat" in o.flags and isinstance(o.reason, str)


def test_corrupt_missing_or_wrong_raw_files(night: Path, tmp_path: Path) -> None:
    repo = NightDirectoryRepository(night)
    adapter = CcdProcessing(repo)
    v = _visits(night)[0]
    pre = adapter.preload(_info(v), 2)
    good = repo.get_raw(v.visit_id, 2)
    assert good is not None
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(blob[: len(blob) // 3])
    flipped = tmp_path / "flipped.fits"
    b = bytearray(blob)
    b[-5000] ^= 0xFF
    flipped.write_bytes(bytes(b))
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"not a fits file at all" * 100)
    other = repo.get_raw(v.visit_id, 1)
    assert other is not None
    for path in (truncated, flipped, garbage, tmp_path / "absent.fits", other):
        o = adapter.process(path, pre)
        assert not o.ok and o.reason.startswith("bad_input:"), (path, o.reason)
        assert len(o.diasources) == 0 and o.cutouts == []


def test_a_raw_is_checked_against_its_registered_checksum(night: Path, tmp_path: Path) -> None:
    """With the registry's sha256 the raw is verified by it (not by the HDUs' FITS checksums):
    one flipped bit anywhere is refused, and a good file reads as without it."""
    repo = NightDirectoryRepository(night)
    v = _visits(night)[0]
    good = repo.get_raw(v.visit_id, 2)
    assert good is not None
    blob = good.read_bytes()
    registered = hashlib.sha256(blob).hexdigest()
    adapter = CcdProcessing(repo)
    pre = adapter.preload(_info(v), 2)
    det = pre.camera.detector(2)
    plain, checked = read_raw(good, det), read_raw(good, det, registered)
    assert checked.header == plain.header
    assert all(np.array_equal(a, b) for a, b in zip(checked.amps, plain.amps, strict=True))
    for offset in (100, len(blob) // 2, len(blob) - 5000):
        flipped = tmp_path / f"flipped{offset}.fits"
        b = bytearray(blob)
        b[offset] ^= 0x01
        flipped.write_bytes(bytes(b))
        with pytest.raises(InvalidInputError, match="corrupt"):
            read_raw(flipped, det, registered)
    o = adapter.process(flipped, pre, registered)
    assert not o.ok and o.reason.startswith("bad_input:") and "corrupt" in o.reason
