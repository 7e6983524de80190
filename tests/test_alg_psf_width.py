"""The PSF model's width error across a CCD and the PSF-flux correction it gives (issue 14: on
the `mini` nights, whose CCDs have too few PSF stars for a spatially varying model, bright
transients' PSF fluxes were off by 1.2 % rms, anti-correlated with the true PSF's width there,
and their pulls at true S/N 50–100 had robust σ 1.36)."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.diasource import DIASOURCE_DTYPE
from algorithms.measure import psf_fit
from algorithms.psf import KernelPsf
from algorithms.psf_width import (
    MIN_STARS,
    WidthMap,
    correct_psf_fluxes,
    fit_width_map,
    star_width_offsets,
)
from algorithms.synthetic import moffat_kernel

N, FWHM, STAR_FLUX, NOISE, GRADIENT = 600, 4.3, 2.0e5, 5.0, 0.04
STAR_DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("flux", "f8"), ("fluxErr", "f8")])


def _fwhm_at(x: float) -> float:
    """The true FWHM: GRADIENT wider at the right edge than in the middle, narrower at the left."""
    return FWHM * (1.0 + GRADIENT * (2.0 * x / (N - 1) - 1.0))


def _add(img: np.ndarray, x: float, y: float, flux: float) -> None:
    k = moffat_kernel(_fwhm_at(x), 3.0, 41)
    k *= flux / k.sum()
    ix, iy = int(x), int(y)
    img[iy - 20 : iy + 21, ix - 20 : ix + 21] += k


def _scene(
    seed: int, n_side: int = 6, extra: tuple[float, float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Moffat stars on a grid whose width changes across the CCD, and their catalogue."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, NOISE, (N, N)).astype(np.float32)
    grid = np.linspace(40, N - 41, n_side)
    xs, ys = (a.ravel() for a in np.meshgrid(grid, grid))
    stars = np.zeros(len(xs), STAR_DTYPE)
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        _add(img, x, y, STAR_FLUX)
        stars[k] = (int(x), int(y), STAR_FLUX, STAR_FLUX / 300.0)
    if extra is not None:
        _add(img, *extra)
    return img, stars


def _model() -> KernelPsf:
    return KernelPsf(moffat_kernel(FWHM, 3.0, 41).astype(np.float64))


def test_width_map_recovers_the_gradient_of_the_true_psf() -> None:
    img, stars = _scene(3)
    width = fit_width_map(img, _model(), stars)
    assert width is not None and width.n_stars == len(stars)
    offset, grad_x, grad_y = width.coef
    assert abs(offset) < 0.005
    assert grad_x == pytest.approx(GRADIENT, abs=0.008)
    assert abs(grad_y) < 0.005
    delta = star_width_offsets(img, _model(), stars["x"], stars["y"])
    assert np.all(np.isfinite(delta))


def test_correction_removes_the_flux_error_of_a_constant_psf_model() -> None:
    """A bright source at the wide edge: a constant-model PSF flux is low by ~the width excess;
    corrected, it is right within its (grown) error."""
    true_flux, x, y = 4.0e5, N - 60.0, 300.0
    img, stars = _scene(5, extra=(x, y, true_flux))
    var = np.full(img.shape, NOISE**2, np.float32)
    fit = psf_fit(img - _star_light(stars), var, None, _model(), x, y)
    assert fit.ok
    bias = fit.flux / true_flux - 1.0
    assert bias < -0.02
    width = fit_width_map(img, _model(), stars)
    assert width is not None
    width = width.calibrated(stars["x"], stars["y"])
    dia = np.zeros(1, DIASOURCE_DTYPE)
    dia["x"], dia["y"] = fit.x, fit.y
    dia["psfFlux"], dia["psfFluxErr"] = fit.flux, fit.flux_err
    dia["scienceFlux"], dia["scienceFluxErr"] = fit.flux, fit.flux_err
    correct_psf_fluxes(dia, width)
    corrected = float(dia["psfFlux"][0])
    assert abs(corrected / true_flux - 1.0) < 0.3 * abs(bias)
    assert abs(corrected - true_flux) < 3.0 * float(dia["psfFluxErr"][0])
    assert dia["psfFluxErr"][0] > fit.flux_err
    assert dia["scienceFlux"][0] == dia["psfFlux"][0]


def _star_light(stars: np.ndarray) -> np.ndarray:
    """The grid stars alone (noise-free), so that the test source is fitted on its own."""
    img = np.zeros((N, N), np.float32)
    for s in stars:
        _add(img, float(s["x"]), float(s["y"]), STAR_FLUX)
    return img


def test_dipoles_failed_fits_and_unplaced_sources_keep_their_flux() -> None:
    width = WidthMap(np.array([0.0, 0.05, 0.0]), np.zeros((3, 3)), (N, N), 20)
    dia = np.zeros(4, DIASOURCE_DTYPE)
    dia["x"], dia["y"] = N - 1.0, 10.0
    dia["x"][2] = np.nan
    dia["psfFlux"], dia["psfFluxErr"] = 1000.0, 10.0
    dia["dipoleFitAttempted"][0] = True
    dia["psfFlux_flag"][1] = True
    correct_psf_fluxes(dia, width)
    assert np.all(dia["psfFlux"][:3] == 1000.0) and np.all(dia["psfFluxErr"][:3] == 10.0)
    assert dia["psfFlux"][3] == pytest.approx(1000.0 / 0.95, rel=1e-6)


def test_stars_without_a_position_are_left_out_of_the_map() -> None:
    img, stars = _scene(3)
    stars["x"][0] = np.nan
    width = fit_width_map(img, _model(), stars)
    assert width is not None and width.n_stars == len(stars) - 1


def test_too_few_or_faint_stars_give_no_map() -> None:
    img, stars = _scene(7, n_side=2)
    assert len(stars) < MIN_STARS
    assert fit_width_map(img, _model(), stars) is None
    img, stars = _scene(7)
    faint = stars.copy()
    faint["fluxErr"] = faint["flux"] / 20.0
    assert fit_width_map(img, _model(), faint) is None
    correct_psf_fluxes(np.zeros(0, DIASOURCE_DTYPE), None)


def test_a_blend_is_clipped_from_the_map() -> None:
    """A star with a close neighbour looks wide; the map must not follow it."""
    img, stars = _scene(9)
    blended = stars[len(stars) // 2]
    _add(img, float(blended["x"]) + 3.0, float(blended["y"]), STAR_FLUX)
    width = fit_width_map(img, _model(), stars)
    assert width is not None and width.n_stars == len(stars) - 1
    assert width.coef[1] == pytest.approx(GRADIENT, abs=0.01)
