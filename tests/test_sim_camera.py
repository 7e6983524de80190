"""Camera simulator: determinism, FITS convention, photometry and astrometry against truth."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from algorithms.render import moffat_enclosed
from algorithms.render_wcs import angular_separation, pixel_to_sky, sky_to_pixel
from config.cameras import load_camera
from summit.camera import CameraSimulator, raw_path
from summit.schedule import generate_schedule
from summit.sky import MOVING, STAR, TRANSIENT, Sky, SkyParams

DENSE = SkyParams(star_density_pole=2.0e5, transient_density=4.0e4, mover_density_floor=3.0e4)


@pytest.fixture(scope="module")
def setup() -> tuple[CameraSimulator, list]:
    cam = load_camera("mini")
    visits = generate_schedule(cam, 4, seed=3)
    sky = Sky(3, visits[0].mjd_start - 0.02, visits[-1].mjd_start + 0.02, DENSE)
    return CameraSimulator(cam, sky, seed=3), visits


def _sec(text: str) -> tuple[int, int, int, int]:
    x1, x2, y1, y2 = map(int, re.fullmatch(r"\[(\d+):(\d+),(\d+):(\d+)\]", text).groups())
    return x1, x2, y1, y2


def assemble(hdul: fits.HDUList) -> np.ndarray:
    """A minimal ISR: row-by-row serial-overscan subtraction, gain, placement by DETSEC."""
    _x1, x2, _y1, y2 = _sec(hdul[0].header["DETSIZE"])
    out = np.zeros((y2, x2), np.float64)
    for hdu in hdul[1:]:
        h, raw = hdu.header, hdu.data.astype(np.float64)
        dx1, dx2, dy1, dy2 = _sec(h["DATASEC"])
        bx1, bx2, _, _ = _sec(h["BIASSEC"])
        over = np.median(raw[dy1 - 1 : dy2, bx1 - 1 : bx2], axis=1)
        data = (raw[dy1 - 1 : dy2, dx1 - 1 : dx2] - over[:, None]) * h["GAIN"]
        tx1, tx2, ty1, ty2 = _sec(h["DETSEC"])
        if tx1 > tx2:
            data, (tx1, tx2) = data[:, ::-1], (tx2, tx1)
        if ty1 > ty2:
            data, (ty1, ty2) = data[::-1, :], (ty2, ty1)
        out[ty1 - 1 : ty2, tx1 - 1 : tx2] = data
    return out


def test_same_seed_same_bytes(setup, tmp_path: Path) -> None:
    sim, visits = setup
    a = sim.write_raw(visits[0], 1, tmp_path / "a.fits")
    b = CameraSimulator(sim.camera, sim.sky, seed=3).write_raw(visits[0], 1, tmp_path / "b.fits")
    assert (tmp_path / "a.fits").read_bytes() == (tmp_path / "b.fits").read_bytes()
    assert np.array_equal(a.id, b.id)
    CameraSimulator(sim.camera, sim.sky, seed=4).write_raw(visits[0], 1, tmp_path / "c.fits")
    assert (tmp_path / "a.fits").read_bytes() != (tmp_path / "c.fits").read_bytes()


def test_fits_geometry_and_headers(setup, tmp_path: Path) -> None:
    sim, visits = setup
    for det in sim.camera.detectors:
        path = raw_path(tmp_path, visits[0], det.id)
        sim.write_raw(visits[0], det.id, path)
        with fits.open(path, checksum=True) as hdul:
            p = hdul[0].header
            assert p["DETECTOR"] == det.id and p["VISIT"] == visits[0].visit_id
            assert p["BAND"] == visits[0].band and p["TIMESYS"] == "TAI"
            assert p["MJD-END"] > p["MJD-OBS"] and p["EXPTIME"] == 30.0
            assert p["DATE-BEG"].startswith("2025-") and p["RA"] == visits[0].ra
            assert len(hdul) == 1 + len(det.amplifiers) == 1 + p["NAMPS"]
            covered = np.zeros((det.ny, det.nx), int)
            for amp, hdu in zip(det.amplifiers, hdul[1:], strict=True):
                h = hdu.header
                assert h["EXTNAME"] == amp.name and hdu.data.dtype.str[1:] == "i4"
                assert hdu.data.shape == amp.raw_shape
                for key in ("GAIN", "RDNOISE", "SATURATE", "BIASSEC", "PREPSEC", "POVERSEC"):
                    assert key in h
                x1, x2, y1, y2 = _sec(h["DETSEC"])
                assert (x1 > x2) == amp.flip_x and (y1 > y2) == amp.flip_y
                covered[min(y1, y2) - 1 : max(y1, y2), min(x1, x2) - 1 : max(x1, x2)] += 1
                bx1, bx2, by1, by2 = _sec(h["BIASSEC"])
                over = hdu.data[by1 - 1 : by2, bx1 - 1 : bx2]
                assert abs(over.std() - amp.read_noise / amp.gain) < 0.3 * amp.read_noise / amp.gain
                assert hdu.data.max() <= h["SATURATE"]
            assert (covered == 1).all()
            w = WCS(p)  # the nominal WCS from the commanded pointing
            ra, dec = w.all_pix2world([[det.nx / 2, det.ny / 2]], 0)[0]
            assert abs(ra - visits[0].ra) < 0.1 and abs(dec - visits[0].dec) < 0.1


def test_true_wcs_header_matches_projection(setup) -> None:
    sim, visits = setup
    det = sim.camera.detectors[2]
    wp = sim.wcs_params(det, sim.true_pointing(visits[1]))
    w = WCS(fits.Header(sim.true_wcs_header(visits[1], det.id)))
    xy = np.array([[0.0, 0.0], [511.0, 3.0], [250.5, 400.2]])
    ra, dec = pixel_to_sky(xy[:, 0], xy[:, 1], **wp)
    sky = w.all_pix2world(xy, 0)
    assert np.allclose(sky[:, 0], ra, atol=1e-9) and np.allclose(sky[:, 1], dec, atol=1e-9)
    x, y = sky_to_pixel(ra, dec, **wp)
    assert np.allclose(x, xy[:, 0], atol=1e-6) and np.allclose(y, xy[:, 1], atol=1e-6)
    commanded = visits[1]
    true = sim.true_pointing(commanded)
    offset = np.hypot(
        (true.ra - commanded.ra) * np.cos(np.radians(true.dec)), true.dec - commanded.dec
    )
    assert 0 < offset * 3600 < 15  # the header pointing is slightly wrong


def _calibrated(sim: CameraSimulator, visit, det_id: int) -> tuple[np.ndarray, object]:
    hdul, truth = sim.render(visit, det_id)
    img = assemble(hdul) / sim.signature(det_id).flat(visit.band)
    return img - np.median(img), truth


def test_star_flux_matches_truth(setup) -> None:
    sim, visits = setup
    pulls = []
    for det_id in range(4):
        img, truth = _calibrated(sim, visits[0], det_id)
        for k in np.flatnonzero((truth.kind == STAR) & (truth.flux_e > 3e4) & (truth.flux_e < 3e5)):
            x, y, f, fwhm = truth.x[k], truth.y[k], truth.flux_e[k], truth.fwhm_px[k]
            r = 4.0 * fwhm
            if not (r + 2 < x < img.shape[1] - r - 2 and r + 2 < y < img.shape[0] - r - 2):
                continue
            d = np.hypot(truth.x - x, truth.y - y)
            if truth.flux_e[(d > 0) & (d < 2 * r)].sum() > 0.02 * f:
                continue  # blended
            yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
            ap = np.hypot(xx - x, yy - y) <= r
            faint = truth.flux_e[(d > 0) & (d < r - 2 * fwhm)].sum()
            expected = f * moffat_enclosed(r, fwhm, 3.0) + faint
            sky_e = 30 * 10 ** (-0.4 * (visits[0].sky_brightness - 28.36)) * 0.04
            sigma = np.sqrt(expected + ap.sum() * (sky_e + 50.0))
            ann = (np.hypot(xx - x, yy - y) > r + 3) & (np.hypot(xx - x, yy - y) < r + 15)
            background = np.median(img[ann])
            pulls.append((img[ap].sum() - ap.sum() * background - expected) / sigma)
    assert len(pulls) >= 3, "the dense test sky should hold a few bright isolated stars"
    assert np.median(np.abs(pulls)) < 2.0, pulls


def test_transients_and_movers_land_where_truth_says(setup) -> None:
    sim, visits = setup
    seen_transient = seen_mover = False
    for det_id in range(4):
        img, truth = _calibrated(sim, visits[0], det_id)
        inside = (truth.x > 10) & (truth.x < 500) & (truth.y > 10) & (truth.y < 500)
        for k in np.flatnonzero(inside & (truth.kind == TRANSIENT) & (truth.flux_e > 5e3)):
            xi, yi = round(truth.x[k]), round(truth.y[k])
            stamp = img[yi - 3 : yi + 4, xi - 3 : xi + 4].sum()
            assert stamp > 0.3 * truth.flux_e[k]
            seen_transient = True
        model = sim.electrons(visits[0], det_id, truth)  # noiseless source electrons
        for k in np.flatnonzero(inside & (truth.kind == MOVING) & (truth.flux_e > 5e3)):
            xs = np.linspace(truth.x_start[k], truth.x_end[k], 9)
            ys = np.linspace(truth.y_start[k], truth.y_end[k], 9)
            ok = (xs > 0) & (xs < 511) & (ys > 0) & (ys < 511)
            pix = np.unique(np.stack([np.round(ys[ok]), np.round(xs[ok])]).astype(int), axis=1)
            iy, ix = pix
            sigma = np.sqrt((model[iy, ix] + 900.0).sum())  # shot + sky + read noise
            if model[iy, ix].sum() < 10 * sigma:
                continue  # too faint per pixel to check point by point
            assert abs(img[iy, ix].sum() - model[iy, ix].sum()) < 5 * sigma
            seen_mover = True
    assert seen_transient and seen_mover
    # moving objects move between the two visits of a pair, by rate x time
    cat = sim.sky.moving_catalog(visits[0].ra, visits[0].dec, 0.2, visits[0].mjd_mid)
    r0, d0 = sim.sky.positions(cat, visits[0].mjd_mid)
    r1, d1 = sim.sky.positions(cat, visits[0].mjd_mid + 1.0 / 24)
    sep = np.array(
        [angular_separation(a, b, c, d) for a, b, c, d in zip(r0, d0, r1, d1, strict=True)]
    )
    assert np.allclose(sep, cat.rate / 24, rtol=1e-3)


def test_transient_turns_on_during_the_night() -> None:
    sky = Sky(5, 60800.9, 60801.3, DENSE)
    cat = sky.static_catalog(150.0, -30.0, 0.1)
    t = cat.kind == TRANSIENT
    exploding = t & (cat.t0 > 60800.95) & (cat.t0 < 60801.25)
    assert exploding.any()
    k = np.flatnonzero(exploding)[0]
    before = sky.magnitudes(cat, "r", cat.t0[k] - 0.01)[k]
    after = sky.magnitudes(cat, "r", cat.t0[k] + 0.05)[k]
    later = sky.magnitudes(cat, "r", cat.t0[k] + 0.3)[k]
    assert np.isinf(before) and np.isfinite(after) and later < after


def test_saturation_and_bleed(setup) -> None:
    sim, visits = setup
    from summit.camera import Truth

    visit = visits[0]
    truth = sim.truth(visit, 0)
    bright = Truth(
        *(
            np.append(getattr(truth, f), v)
            for f, v in (
                ("id", 1),
                ("kind", STAR),
                ("ra", 0.0),
                ("dec", 0.0),
                ("x", 200.3),
                ("y", 100.7),
                ("x_start", 200.3),
                ("y_start", 100.7),
                ("x_end", 200.3),
                ("y_end", 100.7),
                ("mag", 12.0),
                ("flux_njy", 0.0),
                ("flux_e", 2e8),
                ("fwhm_px", 3.5),
            )
        ),
        truth.wcs,
    )
    sim_truth = sim.truth
    try:
        sim.truth = lambda v, d: bright  # type: ignore[method-assign]
        hdul, _ = sim.render(visit, 0)
    finally:
        sim.truth = sim_truth  # type: ignore[method-assign]
    img = assemble(hdul)
    sat_level = min(h.header["SATURATE"] for h in hdul[1:])
    hits = [h for h in hdul[1:] if (h.data >= h.header["SATURATE"]).any()]
    assert len(hits) == 1  # the star sits in one amplifier
    sat = hits[0].data >= hits[0].header["SATURATE"]
    cols = np.flatnonzero(sat.any(axis=0))
    assert sat.sum(axis=0).max() > 5 * len(cols)  # a bleed trail runs along the columns
    assert img[100, 200] > 0.9 * (sat_level - 16000) * 1.5  # the core is at full well
