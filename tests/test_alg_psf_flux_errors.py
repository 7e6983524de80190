"""PSF-flux errors of sources on bright stars: the model term is measured where a PSF flux
looks, at the stars' centres (issue 14: comcam pulls of bright variables had robust σ 0.3-0.8
because the detection's model-error variance, measured on the stars' wings, entered the flux
errors)."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.dia_errors import psf_flux_with_model_error
from algorithms.diasource import DIASOURCE_DTYPE
from algorithms.measure import forced_psf_flux
from algorithms.model_noise import add_model_error, flux_positions_at_stars, psf_flux_model_error
from algorithms.psf import KernelPsf
from algorithms.synthetic import moffat_kernel

N, NOISE, STAR_FLUX, CORE_EPS = 420, 30.0, 2.0e6, 0.002


def _scene(seed: int) -> tuple[np.ndarray, ...]:
    """A difference over 49 bright stars: each leaves a registration dipole (no PSF flux, what
    the detection's ε must cover) and a core residual of CORE_EPS·F rms; 6 of them vary."""
    rng = np.random.default_rng(seed)
    kern = moffat_kernel(4.2, 3.0, 41)
    kern /= kern.sum()
    static = np.zeros((N, N), np.float32)
    diff = rng.normal(0.0, NOISE, (N, N)).astype(np.float32)
    xs, ys = np.meshgrid(np.arange(7) * 55.0 + 45, np.arange(7) * 55.0 + 45)
    xs, ys = xs.ravel(), ys.ravel()
    change = np.zeros(len(xs))
    change[rng.choice(len(xs), 6, replace=False)] = rng.choice([-1, 1], 6) * 3000.0
    for x, y, dflux in zip(xs.astype(int), ys.astype(int), change, strict=True):
        stamp = STAR_FLUX * kern
        static[y - 20 : y + 21, x - 20 : x + 21] += stamp
        dipole = 0.5 * (np.roll(stamp, 1, axis=0) - np.roll(stamp, -1, axis=0))
        core = (dflux + rng.normal(0.0, CORE_EPS * STAR_FLUX)) * kern
        diff[y - 20 : y + 21, x - 20 : x + 21] += rng.choice([-1, 1]) * 0.6 * dipole + core
    return diff, static, xs, ys, change, KernelPsf(kern)


def test_psf_flux_model_error_measures_the_core_residual_not_the_wings() -> None:
    diff, static, xs, ys, _, psf = _scene(11)
    var = np.full((N, N), NOISE**2, np.float32)
    mask = np.zeros((N, N), np.int32)
    flux = np.full(len(xs), STAR_FLUX)
    eps_psf = psf_flux_model_error(diff, var, mask, psf, xs, ys, flux, 1.0, 0.05)
    assert eps_psf is not None and 0.6 * CORE_EPS < eps_psf < 1.6 * CORE_EPS
    eps_det = add_model_error(diff, var.copy(), mask, static, 1.8, 0.05)
    assert eps_det > 3 * eps_psf
    # faint stars cannot measure it; nothing to measure on a clean difference
    assert psf_flux_model_error(diff, var, mask, psf, xs, ys, flux * 1e-4, 1.0, 0.05) is None
    clean = np.random.default_rng(1).normal(0.0, NOISE, (N, N)).astype(np.float32)
    assert psf_flux_model_error(clean, var, mask, psf, xs, ys, flux, 1.0, 0.05) < 2e-4
    with pytest.raises(ValueError, match="shapes"):
        psf_flux_model_error(diff, var[:5], mask, psf, xs, ys, flux)
    with pytest.raises(ValueError, match="lengths"):
        psf_flux_model_error(diff, var, mask, psf, xs, ys[:3], flux)


def test_pulls_of_sources_on_bright_stars_have_unit_width() -> None:
    pulls_before, pulls_after = [], []
    for seed in (11, 12):
        diff, static, xs, ys, change, psf = _scene(seed)
        pixel_var = np.full((N, N), NOISE**2, np.float32)
        mask = np.zeros((N, N), np.int32)
        var = pixel_var.copy()
        eps = add_model_error(diff, var, mask, static, 1.8, 0.05)
        eps_psf = psf_flux_model_error(
            diff, pixel_var, mask, psf, xs, ys, np.full(len(xs), STAR_FLUX), 1.0, 0.05
        )
        assert eps_psf is not None and eps_psf < eps
        dia = np.zeros(len(xs), DIASOURCE_DTYPE)
        for row, x, y in zip(dia, xs, ys, strict=True):
            f, e, *_ = forced_psf_flux(diff, var, mask, psf, x, y)
            row["x"], row["y"], row["psfFlux"], row["psfFluxErr"] = x, y, f, e
            row["templateFlux"] = STAR_FLUX
        pulls_before.append((dia["psfFlux"] - change) / dia["psfFluxErr"])
        psf_flux_with_model_error(dia, diff, pixel_var, mask, psf, 1.0, 1.0, eps_psf)
        pulls_after.append((dia["psfFlux"] - change) / dia["psfFluxErr"])

    def robust_sigma(p: list[np.ndarray]) -> float:
        a = np.concatenate(p)
        return 1.4826 * float(np.median(np.abs(a - np.median(a))))

    assert robust_sigma(pulls_before) < 0.5
    assert 0.75 < robust_sigma(pulls_after) < 1.25


def test_dipole_fits_and_failed_fits_keep_their_errors() -> None:
    diff, _, xs, ys, _, psf = _scene(13)
    var = np.full((N, N), NOISE**2, np.float32)
    dia = np.zeros(3, DIASOURCE_DTYPE)
    dia["x"], dia["y"], dia["psfFluxErr"], dia["templateFlux"] = xs[:3], ys[:3], 1e5, STAR_FLUX
    dia["dipoleFitAttempted"][1] = True
    dia["psfFlux_flag"][2] = True
    psf_flux_with_model_error(dia, diff, var, np.zeros((N, N), np.int32), psf, 2.0, 1.1, 1e-3)
    f0, err0, *_ = forced_psf_flux(diff, var, None, psf, xs[0], ys[0])
    assert dia["psfFlux"][0] == pytest.approx(2.0 * f0)
    assert dia["psfFluxErr"][0] == pytest.approx(np.hypot(1.1 * err0 * 2.0, 1e-3 * STAR_FLUX))
    assert list(dia["psfFluxErr"][1:]) == [1e5, 1e5] and list(dia["psfFlux"][1:]) == [0, 0]


def test_flux_of_a_change_at_a_bright_star_is_fitted_at_the_star() -> None:
    """A 3 % change of a bright star whose subtraction leaves a registration dipole (a 0.03 px
    shift): the difference centroid is pulled towards one lobe, and a PSF flux there takes
    in part of the lobe (comcam: 16-18 mag variables 0.1-0.7 px off, |flux| 3-10 % off). At
    the star's science centroid the pulls are unbiased with unit width."""
    from algorithms.measure import psf_fit
    from algorithms.synthetic import render_moffat

    fwhm, star, dflux = 4.2, 1.0e6, 3.0e4
    kern = moffat_kernel(fwhm, 3.0, 41)
    psf = KernelPsf(kern / kern.sum())
    along, before, after = [], [], []
    for seed in (21, 22):
        rng = np.random.default_rng(seed)
        gx, gy = np.meshgrid(np.arange(7) * 55.0 + 45, np.arange(7) * 55.0 + 45)
        xs = gx.ravel()
        ys = gy.ravel()
        change = rng.choice([-1.0, 1.0], xs.size) * dflux
        phi = rng.uniform(0, 2 * np.pi, xs.size)
        dx, dy = 0.015 * np.cos(phi), 0.015 * np.sin(phi)
        diff = rng.normal(0.0, NOISE, (N, N))
        fw = np.full(xs.size, fwhm)
        render_moffat(diff, xs - dx, ys - dy, np.full(xs.size, star), fw, 3.0, 8.0)
        render_moffat(diff, xs + dx, ys + dy, np.full(xs.size, -star), fw, 3.0, 8.0)
        render_moffat(diff, xs, ys, change, fw, 3.0, 8.0)
        diff = diff.astype(np.float32)
        var = np.full((N, N), NOISE**2, np.float32)
        mask = np.zeros((N, N), np.int32)
        dia = np.zeros(xs.size, DIASOURCE_DTYPE)
        for row, x, y in zip(dia, xs, ys, strict=True):
            fit = psf_fit(diff, var, mask, psf, x, y, n_iter=4)
            row["x"], row["y"], row["psfFlux"] = fit.x, fit.y, fit.flux
            row["templateFlux"] = star
        along.append(np.hypot(dia["x"] - xs, dia["y"] - ys))
        stars = np.zeros(xs.size + 1, [("x", "f8"), ("y", "f8"), ("flux", "f8")])
        stars["x"][:-1] = xs + rng.normal(0, 0.003, xs.size)
        stars["y"][:-1] = ys + rng.normal(0, 0.003, xs.size)
        stars["flux"][:-1] = star + change
        stars[-1] = (10.0, 10.0, 1e3)  # a faint star far from all: changes nothing
        at_dia = dia.copy()
        psf_flux_with_model_error(at_dia, diff, var, mask, psf, 1.0, 1.0, 0.0)
        psf_flux_with_model_error(dia, diff, var, mask, psf, 1.0, 1.0, 0.0, stars)
        before.append((at_dia["psfFlux"] - change) / at_dia["psfFluxErr"] * np.sign(change))
        after.append((dia["psfFlux"] - change) / dia["psfFluxErr"])
    offset = np.concatenate(along)
    assert np.median(offset) > 0.2
    b, a = np.concatenate(before), np.concatenate(after)
    assert abs(float(np.median(b))) > 1.0  # |flux| biased where the difference centroid is
    assert abs(float(np.median(a))) < 0.25
    assert 0.75 < 1.4826 * float(np.median(np.abs(a - np.median(a)))) < 1.25
    # a source that outshines the star nearby (a transient on a faint star) keeps its position
    x, y = np.array([100.4]), np.array([100.0])
    near = np.array([100.0]), np.array([100.0]), np.array([5e3])
    assert flux_positions_at_stars(x, y, np.array([2e4]), *near)[0][0] == 100.4
    assert flux_positions_at_stars(x, y, np.array([1e3]), *near)[0][0] == 100.0
    assert flux_positions_at_stars(x + 2, y, np.array([1e3]), *near)[0][0] == 102.4


def test_bright_changes_carry_the_psf_model_error_of_their_own_flux() -> None:
    """The PSF varies across the CCD (FWHM 4.2 ± 2 %) and the model is one kernel: a static
    star leaves δ·F on the difference and a transient of flux F is measured as (1 + δ)·F,
    the same δ. ε measured at the stars, applied to the transients' own flux, gives their
    pulls unit width; without it they widen with S/N (mini: robust σ 1.45 at S/N 50-100)."""
    from algorithms.model_noise import add_flux_model_error
    from algorithms.synthetic import render_moffat

    kern = moffat_kernel(4.2, 3.0, 41)
    psf = KernelPsf(kern / kern.sum())
    rng = np.random.default_rng(31)
    g = np.arange(11) * 36.0 + 30
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    star, tflux = 2.0e6, 3.0e4  # transients at S/N ≈ 130
    diff = rng.normal(0.0, NOISE, (N, N))
    model = np.zeros((N, N))
    fw = 4.2 * (1 + rng.normal(0.0, 0.02, gx.size))
    sx, sy = gx[::2], gy[::2]  # stars on every other grid point, transients between
    render_moffat(diff, sx, sy, np.full(sx.size, star), fw[::2], 3.0, 8.0)
    render_moffat(model, sx, sy, np.full(sx.size, star), np.full(sx.size, 4.2), 3.0, 8.0)
    diff -= model  # what subtraction with the one-kernel model leaves of each static star
    tx, ty = gx[1::2], gy[1::2]
    render_moffat(diff, tx, ty, np.full(tx.size, tflux), fw[1::2], 3.0, 8.0)
    diff = diff.astype(np.float32)
    var = np.full((N, N), NOISE**2, np.float32)
    mask = np.zeros((N, N), np.int32)
    eps = psf_flux_model_error(diff, var, mask, psf, sx, sy, np.full(sx.size, star), 1.0, 0.05)
    assert eps is not None and eps > 0
    dia = np.zeros(tx.size, DIASOURCE_DTYPE)
    for row, x, y in zip(dia, tx, ty, strict=True):
        f, e, *_ = forced_psf_flux(diff, var, mask, psf, x, y)
        row["x"], row["y"], row["psfFlux"], row["psfFluxErr"] = x, y, f, e

    def robust_sigma(p: np.ndarray) -> float:
        return 1.4826 * float(np.median(np.abs(p - np.median(p))))

    assert robust_sigma((dia["psfFlux"] - tflux) / dia["psfFluxErr"]) > 1.5
    add_flux_model_error(dia, eps)
    assert 0.75 < robust_sigma((dia["psfFlux"] - tflux) / dia["psfFluxErr"]) < 1.3
    # dipole fits and failed fits keep their errors; ε = 0 changes nothing
    dia["dipoleFitAttempted"][0], dia["psfFlux_flag"][1] = True, True
    before = dia["psfFluxErr"].copy()
    add_flux_model_error(dia, eps)
    assert list(dia["psfFluxErr"][:2]) == list(before[:2])
    once = dia["psfFluxErr"].copy()
    add_flux_model_error(dia, 0.0)
    assert np.array_equal(dia["psfFluxErr"], once)
