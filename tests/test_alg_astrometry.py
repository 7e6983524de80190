"""TAN-SIP WCS, astrometric fit against a reference catalogue, photometric zeropoint."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from algorithms.astrometry import fit_astrometry, separation_mas
from algorithms.photocal import fit_zeropoint
from algorithms.wcs import TanSipWcs


def _truth() -> TanSipWcs:
    base = TanSipWcs.simple((210.0, -45.0), (2047.5, 2047.5), 0.2, 12.0)
    return TanSipWcs(
        crpix=base.crpix, crval=base.crval, cd=base.cd,
        sip_a={(2, 0): 1.2e-7, (1, 1): -6e-8, (3, 0): 1.2e-10},
        sip_b={(0, 2): 1.2e-7, (0, 3): -1.2e-10},
    )  # fmt: skip


def test_wcs_round_trip_and_astropy_agreement() -> None:
    w = _truth()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 4096, 200), rng.uniform(0, 4096, 200)
    ra, dec = w.pixel_to_sky(x, y)
    x2, y2 = w.sky_to_pixel(ra, dec)
    assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-5
    aw = WCS(w.to_header())
    ra_a, dec_a = aw.all_pix2world(x, y, 0)
    assert np.max(separation_mas(ra, dec, ra_a, dec_a)) < 0.1
    assert w.pixel_scale() == pytest.approx(0.2, rel=1e-6)
    s = w.shifted(100, 50)
    assert np.allclose(s.pixel_to_sky(x - 100, y - 50), (ra, dec))


def _catalogue(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    w = _truth()
    x, y = rng.uniform(-20, 4116, n), rng.uniform(-20, 4116, n)
    ra, dec = w.pixel_to_sky(x, y)
    flux = 10 ** rng.uniform(3, 6, n)
    return w, x, y, ra, dec, flux, rng


def test_astrometric_fit_reaches_50_mas() -> None:
    w, x, y, ra, dec, flux, rng = _catalogue(300)
    on = (x > 0) & (x < 4095) & (y > 0) & (y < 4095)
    sx = x[on] + rng.normal(0, 0.05, on.sum())
    sy = y[on] + rng.normal(0, 0.05, on.sum())
    initial = TanSipWcs.simple(
        (210.0 + 2.0 / 3600 / np.cos(np.deg2rad(-45.0)), -45.0 - 1.0 / 3600), (2047.5, 2047.5),
        0.2002, 12.05,
    )  # fmt: skip
    res = fit_astrometry(sx, sy, flux[on], ra, dec, flux, initial, (4096, 4096))
    assert res.n_matched >= 0.9 * on.sum()
    assert res.rms_mas < 20.0
    tx, ty = rng.uniform(0, 4096, 500), rng.uniform(0, 4096, 500)
    fra, fdec = res.wcs.pixel_to_sky(tx, ty)
    tra, tdec = w.pixel_to_sky(tx, ty)
    assert np.sqrt(np.mean(separation_mas(tra, tdec, fra, fdec) ** 2)) < 50.0


def test_astrometry_with_five_stars_and_too_few() -> None:
    _, x, y, ra, dec, flux, _ = _catalogue(6, seed=4)
    initial = TanSipWcs.simple((210.0 + 0.5 / 3600, -45.0), (2047.5, 2047.5), 0.2, 12.0)
    res = fit_astrometry(x, y, flux, ra, dec, flux, initial, (4096, 4096))
    assert res.n_matched >= 5 and res.order == 0  # the initial WCS shifted and rotated
    with pytest.raises(ValueError, match="reference"):
        fit_astrometry(x[:4], y[:4], flux[:4], ra[:4], dec[:4], flux[:4], initial, (4096, 4096))


def test_few_reference_stars_keep_the_ccd_corners_within_50_mas() -> None:
    """A 512² CCD far from the boresight with 8 reference stars, none near one corner and
    measured to ±50 mas (mini: a WCS fit of 8 matches put a transient at the corner 220-260
    mas off). Only the pointing is unknown; the fit must not extrapolate its noise there."""
    k = 1.5e-9
    nominal = TanSipWcs.simple((150.0, -30.0), (3000.0, -2500.0), 0.2, 5.0)
    nominal = TanSipWcs(
        nominal.crpix, nominal.crval, nominal.cd,
        {(3, 0): k, (1, 2): k}, {(2, 1): k, (0, 3): k},
    )  # fmt: skip
    corners = np.array([[0.0, 0.0], [511.0, 0.0], [0.0, 511.0], [511.0, 511.0], [5.0, 20.0]])
    errs = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        r = np.deg2rad(rng.normal(0, 0.003))  # the camera's rotation error
        truth = TanSipWcs(
            nominal.crpix,
            (150.0 + rng.normal(0, 2.0) / 3600 / np.cos(np.deg2rad(30.0)),
             -30.0 + rng.normal(0, 2.0) / 3600),
            np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]]) @ nominal.cd,
            nominal.sip_a, nominal.sip_b,
        )  # fmt: skip
        x, y = rng.uniform(170, 505, 8), rng.uniform(170, 505, 8)
        ra, dec = truth.pixel_to_sky(x, y)
        sx, sy = x + rng.normal(0, 0.25, 8), y + rng.normal(0, 0.25, 8)
        flux = 10 ** rng.uniform(4, 6, 8)
        res = fit_astrometry(sx, sy, flux, ra, dec, flux, nominal, (512, 512))
        assert res.n_matched >= 5
        fra, fdec = res.wcs.pixel_to_sky(corners[:, 0], corners[:, 1])
        tra, tdec = truth.pixel_to_sky(corners[:, 0], corners[:, 1])
        errs.append(separation_mas(tra, tdec, fra, fdec))
    errs = np.concatenate(errs)
    assert np.sqrt(np.mean(errs**2)) < 40.0
    assert np.max(errs) < 100.0


def test_zeropoint_recovers_calibration() -> None:
    rng = np.random.default_rng(3)
    ref = 10 ** rng.uniform(4, 6, 80)
    cal = 0.52
    inst = ref / cal * (1 + rng.normal(0, 0.01, 80))
    inst[:5] *= 1.5
    pc = fit_zeropoint(inst, inst * 0.01, ref)
    assert pc.calibration == pytest.approx(cal, rel=0.005)
    assert pc.zeropoint == pytest.approx(31.4 - 2.5 * np.log10(cal), abs=0.005)
    assert pc.n_stars <= 76
    with pytest.raises(ValueError):
        fit_zeropoint(inst[:2], inst[:2] * 0.01, ref[:2])
