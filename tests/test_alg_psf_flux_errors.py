"""PSF-flux errors of sources on bright stars: the model term is measured where a PSF flux
looks, at the stars' centres (issue 14: comcam pulls of bright variables had robust σ 0.3-0.8
because the detection's model-error variance, measured on the stars' wings, entered the flux
errors)."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.diasource import DIASOURCE_DTYPE
from algorithms.measure import forced_psf_flux
from algorithms.model_noise import add_model_error, psf_flux_model_error
from algorithms.pipeline import psf_flux_with_model_error
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
