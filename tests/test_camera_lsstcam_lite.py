"""``lsstcam-lite``: LSSTCam's 189 science CCDs at their true places, each a 512 x 512 region.

Geometry against LSSTCam's raft layout, footprints on the sky, the cut-down amplifier layout;
then a one-visit night: truth and reference catalogue for every CCD, and a sample of CCDs
(both vendors, centre and edge of the field) rendered, read back and processed by the real
per-CCD chain.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from algorithms.render_wcs import angular_separation, pixel_to_sky
from base.ccd_inputs import NightDirectoryRepository, read_raw
from base.ccd_processing import CcdProcessing
from config.cameras import _with_geometry, available_cameras, load_camera
from state.durable import sha256_hex
from state.errors import ConfigurationError
from summit.calibs import write_master_calibs
from summit.camera import CameraSimulator, raw_path
from summit.raw_check import verify_raw
from summit.simulation import NightPlan, plan_night, run_night
from summit.templates import write_template

SCIENCE_RAFTS = {f"R{y}{x}" for y in range(5) for x in range(5)} - {"R00", "R04", "R40", "R44"}
# Centre (e2v, R22), an inner e2v raft, and ITL CCDs at the top, bottom and sides of the field.
SAMPLE = (94, 40, 0, 26, 75, 188)


@pytest.fixture(scope="module")
def lite() -> Any:
    return load_camera("lsstcam-lite")


def test_189_unique_detectors_at_lsstcam_raft_positions(lite: Any) -> None:
    full = load_camera("lsstcam")
    assert "lsstcam-lite" in available_cameras()
    assert len(lite.detectors) == 189
    assert len({d.name for d in lite.detectors}) == 189
    assert [d.id for d in lite.detectors] == list(range(189))
    assert {d.name.split("_")[0] for d in lite.detectors} == SCIENCE_RAFTS
    for d, f in zip(lite.detectors, full.detectors, strict=True):
        assert (d.name, d.vendor, d.fp_x_mm, d.fp_y_mm) == (f.name, f.vendor, f.fp_x_mm, f.fp_y_mm)
        raft, sensor = d.name.split("_")
        ry, rx, sy, sx = int(raft[1]), int(raft[2]), int(sensor[1]), int(sensor[2])
        assert d.fp_x_mm == pytest.approx((rx - 2) * 127.0 + (sx - 1) * 42.25)
        assert d.fp_y_mm == pytest.approx((ry - 2) * 127.0 + (sy - 1) * 42.25)
    by_name = {d.name: d for d in lite.detectors}
    assert (by_name["R22_S11"].fp_x_mm, by_name["R22_S11"].fp_y_mm) == (0.0, 0.0)
    assert (by_name["R01_S00"].fp_x_mm, by_name["R01_S00"].fp_y_mm) == (-169.25, -296.25)
    # Vendors as installed: ITL in the outer rafts R01-R03, R10, R20, R41-R43; e2v elsewhere.
    itl = {"R01", "R02", "R03", "R10", "R20", "R41", "R42", "R43"}
    assert all((d.vendor == "ITL") == (d.name[:3] in itl) for d in lite.detectors)
    assert lite.pixel_scale_arcsec == 0.2 and lite.pixel_size_um == 10.0


def test_amplifiers_are_the_vendor_layout_cut_to_512(lite: Any) -> None:
    full = load_camera("lsstcam")
    for d, f in zip(lite.detectors, full.detectors, strict=True):
        assert (d.nx, d.ny, len(d.amplifiers)) == (512, 512, 16)
        for a, b in zip(d.amplifiers, f.amplifiers, strict=True):
            assert (a.name, a.index, a.flip_x, a.flip_y) == (b.name, b.index, b.flip_x, b.flip_y)
            assert (a.prescan, a.serial_overscan, a.parallel_overscan) == (
                b.prescan,
                b.serial_overscan,
                b.parallel_overscan,
            )
            assert (a.nx, a.ny) == (64, 256)
            assert (a.x0 // 64, a.y0 // 256) == (b.x0 // b.nx, b.y0 // b.ny)
    assert lite.sky.overrides()["star_density_pole"] >= 100_000  # enough stars per small CCD


def test_no_two_ccds_overlap_on_the_sky(lite: Any) -> None:
    """Each CCD's sky footprint lies inside a circle (centre to farthest corner); no two such
    circles meet, at a rotated pointing, and neighbours sit at LSSTCam's CCD pitch."""
    sim = CameraSimulator(lite, sky=None, seed=1)  # type: ignore[arg-type]
    pointing = type("P", (), {"ra": 150.0, "dec": -30.0, "rot": 37.0})()
    centres, radii = [], []
    for d in lite.detectors:
        wp = sim.wcs_params(d, pointing)  # type: ignore[arg-type]
        xs = np.array([-0.5, d.nx - 0.5, d.nx - 0.5, -0.5, (d.nx - 1) / 2])
        ys = np.array([-0.5, -0.5, d.ny - 0.5, d.ny - 0.5, (d.ny - 1) / 2])
        ra, dec = pixel_to_sky(xs, ys, **wp)  # type: ignore[arg-type]
        centres.append((ra[4], dec[4]))
        radii.append(float(np.max(angular_separation(ra[:4], dec[:4], ra[4], dec[4]))))
    assert max(radii) == pytest.approx(0.5 * math.hypot(512, 512) * 0.2 / 3600, rel=0.01)
    ra = np.array([c[0] for c in centres])
    dec = np.array([c[1] for c in centres])
    closest = math.inf
    for i, j in itertools.combinations(range(len(centres)), 2):
        sep = float(angular_separation(ra[i], dec[i], ra[j], dec[j]))
        assert sep > radii[i] + radii[j], (lite.detectors[i].name, lite.detectors[j].name)
        closest = min(closest, sep)
    assert closest == pytest.approx(42.25 * 1000 / 10 * 0.2 / 3600, rel=0.01)


def test_geometry_must_name_another_camera_with_rafts() -> None:
    known = available_cameras()
    with pytest.raises(ConfigurationError, match="not another camera"):
        _with_geometry("x", {"geometry": "hsc"}, known)
    with pytest.raises(ConfigurationError, match="not another camera"):
        _with_geometry("lsstcam-lite", {"geometry": "lsstcam-lite"}, known)
    with pytest.raises(ConfigurationError, match="must define them"):
        _with_geometry("x", {"geometry": "mini"}, known)  # mini lists detectors, not rafts
    with pytest.raises(ConfigurationError, match="must define them"):
        _with_geometry("x", {"geometry": "lsstcam", "rafts": []}, known)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, lite: Any) -> tuple[Path, NightPlan]:
    """One visit: truth of all 189 CCDs (run_night); calibrations, template and raw of the
    sample (as run_night writes them, without rendering all 189)."""
    out = tmp_path_factory.mktemp("lite")
    plan = plan_night("lsstcam-lite", 2, 1, out)
    plan = NightPlan(plan.camera, plan.visits[:1], plan.seed, out)
    run_night(plan, calibs=False, templates=False, raws=False)
    sim = CameraSimulator(lite, plan.sky(), plan.seed)
    v = plan.visits[0]
    for det in SAMPLE:
        write_master_calibs(sim.signature(det), out / "calibs" / f"det{det:03d}", (v.band,))
        write_template(sim, v, det, out)
        sim.write_raw(v, det, raw_path(out, v, det))
    return out, plan


def test_truth_and_reference_catalogue_cover_every_ccd(night: tuple[Path, NightPlan]) -> None:
    out, plan = night
    v = plan.visits[0]
    with sqlite3.connect(out / "truth.sqlite") as db:
        exposures = db.execute("SELECT detector FROM exposures WHERE visit = ?", (v.visit_id,))
        assert sorted(r[0] for r in exposures) == list(range(189))
        per_ccd = dict(
            db.execute(
                "SELECT detector, COUNT(*) FROM sources WHERE visit = ? AND kind = 'star'"
                " AND mag < 22 AND x BETWEEN 0 AND 511 AND y BETWEEN 0 AND 511 GROUP BY detector",
                (v.visit_id,),
            ).fetchall()
        )
        # Every CCD has the >= 5 bright (S/N >= 25) stars a PSF model needs.
        assert len(per_ccd) == 189 and min(per_ccd.values()) >= 5
        missing = db.execute(
            "SELECT COUNT(*) FROM sources s LEFT JOIN objects o USING (object_id)"
            " WHERE o.object_id IS NULL"
        ).fetchone()[0]
        assert missing == 0  # every source's object is in the reference catalogue
        plan_q = db.execute("EXPLAIN QUERY PLAN SELECT ra FROM objects WHERE dec BETWEEN 0 AND 1")
        assert "objects_position" in " ".join(str(r) for r in plan_q)


def test_sampled_raws_are_valid_and_process_through_the_chain(
    night: tuple[Path, NightPlan], lite: Any
) -> None:
    out, plan = night
    v = plan.visits[0]
    repo = NightDirectoryRepository(out)
    adapter = CcdProcessing(repo)
    info = {"visit": v.visit_id, "camera": "lsstcam-lite", "band": v.band, "ra": v.ra,
            "dec": v.dec, "rotSkyPos": v.rot_sky_pos, "fieldId": v.field_id,
            "startMjd": v.mjd_start, "exposureTime": v.exptime,
            "detectors": list(range(189))}  # fmt: skip
    for det in SAMPLE:
        path = repo.get_raw(v.visit_id, det)
        assert path is not None
        data = path.read_bytes()
        verify_raw(data, sha256_hex(data), v.visit_id, det)
        with fits.open(path) as hdul:
            assert hdul[0].header["CAMERA"] == "lsstcam-lite"
            assert hdul[0].header["DETNAME"] == lite.detectors[det].name
            assert hdul[0].header["NAMPS"] == 16
            assert hdul[0].header["DETSIZE"] == "[1:512,1:512]"
            shapes = {h.data.shape for h in hdul[1:]}
        a = lite.detectors[det].amplifiers[0]
        assert shapes == {(256 + a.parallel_overscan, a.prescan + 64 + a.serial_overscan)}
        assert read_raw(path, lite.detectors[det]).flags == []
        pre = adapter.preload(info, det)
        assert pre.flags == [], (det, pre.flags)
        res = adapter.process(path, pre)
        assert res.ok, (det, res.reason, res.flags)
        s = res.summary
        assert s["psf_n_stars"] >= 5 and s["astrometry_n_matched"] >= 5, (det, s)
        assert s["psf_fwhm_arcsec"] == pytest.approx(v.seeing_geom, rel=0.35), (det, s)
        assert s["template_coverage"] > 0.95, (det, s)
