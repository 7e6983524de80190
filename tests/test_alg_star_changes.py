"""Variable stars changing by a few per cent of their flux, against the simulator's truth
(issue 14: on comcam every unsaturated miss at true S/N ≥ 7 was a 17–19.6 mag variable
changing by 4.5–6 %, lost under the detection's model-error variance)."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from algorithms import mask as mk
from algorithms.detection import PEAK_DTYPE
from algorithms.pipeline import (
    CcdResult,
    ExposureInfo,
    PipelineConfig,
    ReferenceCatalog,
    Template,
    run_ccd,
)
from algorithms.psf import KernelPsf
from algorithms.star_changes import (
    EPS_SATURATED,
    SaturationInputs,
    saturated_star_change,
    star_change_peaks,
)
from algorithms.synthetic import SimConfig, SimVisit, make_visit, moffat_kernel, render_moffat
from algorithms.synthetic_run import run_visit

CHANGE = 0.04  # of the star's flux: the detection (ε ≈ 0.009-0.011 here) sees at most ~4σ of it
MIN_TRUE_SNR = 7.0
SATURATED_CHANGE = 0.08  # of the saturated star's flux


def _run(v: SimVisit) -> CcdResult:
    return run_visit(v)


def _true_snr(v: SimVisit, flux_e: np.ndarray) -> np.ndarray:
    """S/N of a PSF flux of CHANGE·F on the difference: sky, read and the star's own photon
    noise in the science image, plus the template's noise."""
    c = v.config
    k = v.science_psf_centre / v.science_psf_centre.sum()
    neff = 1.0 / float((k**2).sum())
    sky = neff * (c.sky + c.read_noise**2) * (1.0 + 1.0 / c.template_depth**2)
    return CHANGE * flux_e / np.sqrt(sky + flux_e * (1.0 + 1.0 / c.template_depth**2))


@cache
def _variable_field(seed: int) -> tuple[SimVisit, dict[str, np.ndarray], CcdResult]:
    """The bright field of test_alg_bright_stars (16.8–22 mag, no saturation) with its
    isolated 17–18.7 mag stars turned variable: the template holds each with ±CHANGE of the
    flux the science image sees."""
    cfg = SimConfig(beta=3.0, mag_range=(16.8, 22.0), star_density=5e-4, n_transients=10,
                    bright_star=False, seed=seed)  # fmt: skip
    v = make_visit(cfg)
    s = v.truth_stars
    mag = 31.4 - 2.5 * np.log10(s["flux"])
    inside = (s["x"] > 40) & (s["x"] < cfg.nx - 40) & (s["y"] > 40) & (s["y"] < cfg.ny - 40)
    pick = []
    for k in np.flatnonzero(inside & (mag > 17.0) & (mag < 18.7)).tolist():
        d = np.hypot(s["x"] - s["x"][k], s["y"] - s["y"][k])
        t = v.truth_transients
        if (
            not np.any((d > 0) & (d < 30) & (mag < 20.5))
            and np.hypot(t["x"] - s["x"][k], t["y"] - s["y"][k]).min() > 30
        ):
            pick.append(k)
    sel = np.array(pick, int)
    sign = np.where(np.arange(len(sel)) % 2 == 0, 1.0, -1.0)
    tx, ty = v.template_wcs.sky_to_pixel(s["ra"][sel], s["dec"][sel])
    delta = np.zeros_like(v.template_image, dtype=np.float64)
    fw_t = np.full(len(sel), cfg.fwhm_template / cfg.pixel_scale)
    render_moffat(delta, tx, ty, -sign * CHANGE * s["flux"][sel], fw_t, cfg.beta, 8.0)
    v = dataclasses.replace(v, template_image=(v.template_image + delta).astype(np.float32))
    truth = {"x": s["x"][sel], "y": s["y"][sel], "sign": sign,
             "snr": _true_snr(v, s["flux"][sel] / v.calibration)}  # fmt: skip
    return v, truth, _run(v)


def test_small_changes_of_bright_stars_are_found_at_their_stars() -> None:
    n_strong = n_found = 0
    for seed in (1, 2):
        v, truth, r = _variable_field(seed)
        assert r.ok
        d = r.diasources
        assert r.summary["diff_psf_flux_model_error"] < r.summary["diff_model_error"]
        for x, y, sign, snr in zip(truth["x"], truth["y"], truth["sign"], truth["snr"],
                                   strict=True):  # fmt: skip
            if snr < MIN_TRUE_SNR:
                continue
            n_strong += 1
            near = np.hypot(d["x"] - x, d["y"] - y) < 2.0
            # one DIASource, of the right sign
            if near.sum() == 1:
                row = d[near][0]
                assert np.sign(row["psfFlux"]) == sign
                n_found += 1
        # no DIASource near a bright star that did not vary (nor a second one near one that did)
        s = v.truth_stars
        mag = 31.4 - 2.5 * np.log10(s["flux"])
        static = (mag < 18.0) & ~np.isin(np.round(s["x"], 6), np.round(truth["x"], 6))
        t = v.truth_transients
        real = np.zeros(len(d), bool)
        for xs, ys in ((t["x"], t["y"]), (truth["x"], truth["y"])):
            if len(xs):
                real |= np.hypot(d["x"][:, None] - xs, d["y"][:, None] - ys).min(axis=1) < 2.0
        for x, y in zip(s["x"][static], s["y"][static], strict=True):
            assert not np.any(~real & (np.hypot(d["x"] - x, d["y"] - y) < 25.0))
    assert n_strong >= 4
    assert n_found == n_strong


def _psf() -> KernelPsf:
    k = moffat_kernel(4.0, 3.0, 31)
    return KernelPsf(k / k.sum())


def test_star_change_peaks_tests_only_stars_where_the_detection_variance_hides_a_change() -> None:
    n, noise, flux = 200, 10.0, 2.0e5
    rng = np.random.default_rng(3)
    psf = _psf()
    k = moffat_kernel(4.0, 3.0, 31)
    k /= k.sum()
    diff = rng.normal(0.0, noise, (n, n)).astype(np.float32)
    var = np.full((n, n), noise**2, np.float32)
    mask = np.zeros((n, n), np.int32)
    xs, ys = np.array([50.0, 150.0, 50.0, 150.0]), np.array([50.0, 50.0, 150.0, 150.0])
    for x, y, change in zip(xs, ys, (0.05, -0.05, 0.0, 0.0), strict=True):
        diff[int(y) - 15 : int(y) + 16, int(x) - 15 : int(x) + 16] += change * flux * k
    fl = np.full(4, flux)
    none = np.zeros(0, PEAK_DTYPE)
    pk = star_change_peaks(diff, var, mask, psf, xs, ys, fl, none, 1.0, 0.002, 0.015)
    assert sorted(zip(pk["x"].tolist(), pk["y"].tolist(), strict=True)) == [(50, 50), (150, 50)]
    assert list(pk["negative"][np.argsort(pk["x"] + 1000 * pk["y"])]) == [False, True]
    assert np.all(np.abs(pk["significance"]) >= 5.0)
    # a star already detected is left to its peak; a faint star is left to the detection
    have = np.zeros(1, PEAK_DTYPE)
    have["x"], have["y"] = 52, 49
    pk = star_change_peaks(diff, var, mask, psf, xs, ys, fl, have, 1.0, 0.002, 0.015, 5.0, 10.0)
    assert pk["x"].tolist() == [150]
    pk = star_change_peaks(diff, var, mask, psf, xs, ys, fl * 1e-2, none, 1.0, 0.0, 0.015)
    assert len(pk) == 0
    with pytest.raises(ValueError, match="shapes"):
        star_change_peaks(diff, var[:5], mask, psf, xs, ys, fl, none, 1.0, 0.002, 0.015)
    with pytest.raises(ValueError, match="lengths"):
        star_change_peaks(diff, var, mask, psf, xs, ys[:2], fl, none, 1.0, 0.002, 0.015)


def test_a_few_per_cent_change_of_a_bright_star_is_found_whatever_the_ccds_eps_psf() -> None:
    """On mini-s202, 18.7-18.9 mag variables changing by 4.6-5.8 % were missed: the CCD's
    ε_psf, measured on its ten-odd brightest stars (two of them those variables), was at its
    cap 0.015, not below the detection's, so the test was skipped (and at 0.0134 a 5 % change
    was 3.3σ). Elsewhere ε_psf was 0.000 and a 2.3 % residual of a bright static star a 17σ
    change. Changes of ±5 % are found, residuals of 0.2-2 % are not, whatever ε_psf is."""
    n, noise, flux = 300, 10.0, 1.8e5
    rng = np.random.default_rng(5)
    psf = _psf()
    k = moffat_kernel(4.0, 3.0, 31)
    k /= k.sum()
    diff = rng.normal(0.0, noise, (n, n)).astype(np.float32)
    var = np.full((n, n), noise**2, np.float32)
    mask = np.zeros((n, n), np.int32)
    xs = np.array([50.0, 150.0, 250.0, 50.0, 150.0, 250.0, 50.0, 150.0])
    ys = np.array([50.0, 50.0, 50.0, 150.0, 150.0, 150.0, 250.0, 250.0])
    changes = (0.05, -0.046, 0.058, 0.002, -0.01, 0.015, -0.02, 0.02)
    for x, y, change in zip(xs, ys, changes, strict=True):
        diff[int(y) - 15 : int(y) + 16, int(x) - 15 : int(x) + 16] += change * flux * k
    fl = np.full(len(xs), flux)
    none = np.zeros(0, PEAK_DTYPE)
    for eps_psf in (0.0, 0.002, 0.0134, 0.015, np.nan):
        pk = star_change_peaks(diff, var, mask, psf, xs, ys, fl, none, 1.0, eps_psf, 0.015)
        got = sorted(zip(pk["x"].tolist(), pk["y"].tolist(), strict=True))
        assert got == [(50, 50), (150, 50), (250, 50)], eps_psf


def _saturated_variable(
    change: float, star_changes: bool = True, seed: int = 3
) -> tuple[SimVisit, CcdResult]:
    """A 12.5 mag star (a saturated core and a bleed trail down its column) among the 16.8-22
    mag stars of the bright field, its template flux set so that the science image sees it
    ``change`` × its flux brighter. (The bright field gives the PSF model 46-61 stars; on a
    field of 14-24 mag stars it had 18 and its wings were 11-16 % off.)"""
    cfg = SimConfig(beta=3.0, mag_range=(16.8, 22.0), star_density=5e-4, n_transients=10,
                    seed=seed)  # fmt: skip
    v = make_visit(cfg)
    s = v.truth_stars
    tx, ty = v.template_wcs.sky_to_pixel(s["ra"][:1], s["dec"][:1])
    delta = np.zeros(v.template_image.shape)
    fw_t = np.array([cfg.fwhm_template / cfg.pixel_scale])
    render_moffat(delta, tx, ty, np.array([-change * s["flux"][0]]), fw_t, cfg.beta, 8.0)
    v = dataclasses.replace(v, template_image=(v.template_image + delta).astype(np.float32))
    exp = ExposureInfo(visit=1, detector=0, exptime=v.exptime, initial_wcs=v.initial_wcs)
    ref = ReferenceCatalog(v.ref_ra, v.ref_dec, v.ref_flux)
    tm = Template(v.template_image, v.template_variance, v.template_wcs, v.template_psf)
    # without the star's change the fragments are saturation residuals, dropped as such
    cfg_p = PipelineConfig(star_changes=star_changes, drop_saturation_residuals=star_changes)
    return v, run_ccd(v.raw_amps, v.geometry, v.calibs, exp, ref, tm, cfg_p)


def test_a_saturated_star_that_changed_gives_one_diasource_at_the_star() -> None:
    """Its core is zeroed before subtraction, so the change shows only in the wings, as
    fragments 10-15 px (2-3″) out that match nothing within 1″; now one DIASource at the star
    (flagged saturated) whose flux is the change measured on the two images."""
    for change in (-SATURATED_CHANGE, SATURATED_CHANGE):
        v, r = _saturated_variable(change)
        d = r.diasources
        sx, sy = v.truth_stars["x"][0], v.truth_stars["y"][0]
        dist = np.hypot(d["x"] - sx, d["y"] - sy)
        # one DIASource, at the star (its centroid on the difference's wings was 1.4-1.8 px off)
        assert (dist < 40).sum() == 1 and dist.min() < 0.6
        row = d[np.argmin(dist)]
        assert row["pixelFlags_saturated"] and row["pixelFlags_saturatedCenter"]
        true = change * float(v.truth_stars["flux"][0])  # nJy
        assert np.sign(row["psfFlux"]) == np.sign(change)
        assert abs(row["psfFlux"] - true) < 3.0 * row["psfFluxErr"]
    v, r = _saturated_variable(SATURATED_CHANGE, star_changes=False)
    d = r.diasources
    dist = np.hypot(d["x"] - v.truth_stars["x"][0], d["y"] - v.truth_stars["y"][0])
    assert dist.min() > 5.0 and (dist < 40).sum() >= 1  # before: fragments only


def test_a_static_saturated_star_with_a_bleed_trail_gives_no_diasource() -> None:
    """A static saturated star's two images lose different shares of its flux to the zeroed
    core, which a forced flux on the difference took for a change of 40-50 % of the star
    (one false DIASource at the star on every seed here; on comcam 101-103 the largest cause
    of false DIASources, 95 of 214); measured on its two images it did not change."""
    for seed in (3, 5):
        v, r = _saturated_variable(0.0, seed=seed)
        d = r.diasources
        dist = np.hypot(d["x"] - v.truth_stars["x"][0], d["y"] - v.truth_stars["y"][0])
        assert r.summary["n_saturated_regions"] > 0
        assert not np.any(dist < 40), d[dist < 40][["x", "y", "psfFlux", "snr"]]


def _clipped_star(change: float, seed: int) -> tuple[SaturationInputs, np.ndarray, float]:
    """A 12.5 mag star (7·10⁷ e⁻) in a science image that saturates its core and bleeds its
    excess up and down its column, and in a template (never saturated, a broader PSF) whose
    flux is the science's over 1 + ``change``; the PSFs are the true ones. Returns the
    inputs, the SAT mask and the star's science flux."""
    rng = np.random.default_rng(seed)
    n, flux, sky, full_well = 161, 7.0e7, 1000.0, 7.0e4
    x, y = 80.3 + rng.uniform(-0.5, 0.5), 79.8 + rng.uniform(-0.5, 0.5)
    sci, tmp = np.zeros((n, n)), np.zeros((n, n))
    render_moffat(sci, np.array([x]), np.array([y]), np.array([flux]), np.array([4.0]), 3.0, 8.0)
    render_moffat(tmp, np.array([x]), np.array([y]), np.array([flux / (1.0 + change)]),
                  np.array([3.5]), 3.0, 8.0)  # fmt: skip
    sci += sky + np.sqrt(sci + sky) * rng.standard_normal((n, n))
    sat_level = 0.9 * full_well
    mask = np.zeros((n, n), mk.MASK_DTYPE)
    for col in range(n):  # bleed: the excess moves along the column, charge conserved
        c = sci[:, col]
        excess = float(np.clip(c - full_well, 0.0, None).sum())
        if excess <= 0:
            continue
        c[:] = np.minimum(c, full_well)
        above = np.flatnonzero(c >= full_well)
        lo, hi = above.min(), above.max()
        while excess > 0 and (lo > 0 or hi < n - 1):
            for j in (lo - 1, hi + 1):
                if 0 <= j < n and excess > 0:
                    take = min(full_well - c[j], excess)
                    c[j] += take
                    excess -= take
            lo, hi = max(lo - 1, 0), min(hi + 1, n - 1)
    mask[sci >= sat_level] |= mk.SAT
    sci_var = np.maximum(sci, sky)
    sci -= sky
    tvar = np.full((n, n), sky / 9.0)
    tmp += np.sqrt(tvar) * rng.standard_normal((n, n))
    psf_s = KernelPsf(moffat_kernel(4.0, 3.0, 49), fit_size=29)
    psf_t = KernelPsf(moffat_kernel(3.5, 3.0, 41), fit_size=29)
    f32 = np.float32
    inputs = SaturationInputs(
        sci.astype(f32), sci_var.astype(f32), mask, psf_s, tmp.astype(f32), tvar.astype(f32), psf_t
    )
    return inputs, mask, flux


def test_a_saturated_stars_change_is_measured_from_its_two_images() -> None:
    """The forced flux on the difference at a static saturated star measured 3-36 % of its
    flux (comcam 101-103: the zeroed cores of the two images lose different shares of it);
    the wing fit on the science image against the template's PSF flux finds the change, and
    no change where there is none (here with the true PSFs: no wing-model error)."""
    for seed, change in enumerate((-0.08, -0.03, 0.0, 0.03, 0.08)):
        inputs, mask, flux = _clipped_star(change, seed)
        assert (mask & mk.SAT).sum() > 150  # a saturated core and a bleed trail
        ys, xs = np.nonzero(mask & mk.SAT)
        got = saturated_star_change(inputs, mask, float(xs.mean()), float(ys.mean()), 2.0)
        assert got.ok
        true_change = flux - flux / (1.0 + change)
        assert abs(got.change - true_change) < 0.003 * flux + 3 * got.change_err, (change, got)
        assert got.change_err < 0.002 * flux


def test_a_saturated_star_near_the_ccd_edge_is_measured_on_its_part_of_the_stamp() -> None:
    """On mini's 512² CCDs 11 of 71 saturated stars lay within a PSF stamp (24 px) of the
    edge; the wings on the CCD still hold the change, within the error the test of
    significance gives it (ε = EPS_SATURATED of the flux)."""
    inputs, mask, flux = _clipped_star(0.08, 7)
    cut = np.s_[:, 65:]  # the star ~15 px from the left edge
    planes = [np.ascontiguousarray(a[cut]) for a in (
        inputs.science, inputs.science_var, inputs.science_mask, inputs.template,
        inputs.template_var)]  # fmt: skip
    edge = SaturationInputs(planes[0], planes[1], planes[2], inputs.science_psf, planes[3],
                            planes[4], inputs.template_psf)  # fmt: skip
    m = np.ascontiguousarray(mask[cut])
    ys, xs = np.nonzero(m & mk.SAT)
    got = saturated_star_change(edge, m, float(xs.mean()), float(ys.mean()), 0.0)
    assert got.ok and got.x < 20
    true_change = flux - flux / 1.08
    assert abs(got.change - true_change) < EPS_SATURATED * flux + 3 * got.change_err, got
