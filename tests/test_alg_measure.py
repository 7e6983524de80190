"""psf_fit's one-pass numba step: a star's flux and position, and pixels it must leave out."""

import numpy as np

from algorithms import mask as mk
from algorithms.measure import psf_fit
from algorithms.psf import KernelPsf, fourier_shift, gaussian_kernel


def _star(n: int = 64, x: float = 31.3, y: float = 32.6, flux: float = 5e4) -> np.ndarray:
    k = gaussian_kernel(2.0, 25)
    img = np.zeros((n, n))
    ix, iy = round(x), round(y)
    img[iy - 12 : iy + 13, ix - 12 : ix + 13] = flux * fourier_shift(k, x - ix, y - iy)
    return img


def test_psf_fit_recovers_flux_and_position() -> None:
    rng = np.random.default_rng(5)
    img = (_star() + rng.normal(0.0, 10.0, (64, 64))).astype(np.float32)
    var = np.full(img.shape, 100.0, np.float32)
    fit = psf_fit(img, var, mk.new_mask(img.shape), KernelPsf(gaussian_kernel(2.0, 25)), 31.0, 33.0)
    assert fit.ok and not fit.edge
    assert abs(fit.x - 31.3) < 0.02 and abs(fit.y - 32.6) < 0.02
    assert abs(fit.flux - 5e4) < 3 * fit.flux_err
    assert fit.ndata == 25 * 25 and np.isfinite(fit.lnl) and fit.x_err > 0


def test_psf_fit_leaves_out_masked_and_unusable_pixels() -> None:
    img = _star().astype(np.float32)
    var = np.full(img.shape, 100.0, np.float32)
    msk = mk.new_mask(img.shape)
    img[30, 30] = np.nan
    msk[30, 30] |= mk.BAD
    var[35, 33] = np.inf
    var[28, 29] = 0.0
    fit = psf_fit(img, var, msk, KernelPsf(gaussian_kernel(2.0, 25)), 31.0, 33.0)
    assert fit.ok and fit.ndata == 25 * 25 - 3
    assert abs(fit.flux - 5e4) < 1.0 and abs(fit.x - 31.3) < 1e-3
    empty = psf_fit(img, np.zeros_like(var), msk, KernelPsf(gaussian_kernel(2.0, 25)), 31.0, 33.0)
    assert not empty.ok and np.isnan(empty.flux_err)
