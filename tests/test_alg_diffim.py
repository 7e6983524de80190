"""Lanczos warping and ZOGY subtraction on images with known content."""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from algorithms import mask as mk
from algorithms.measure import psf_fit
from algorithms.psf import KernelPsf
from algorithms.synthetic import moffat_kernel, render_moffat
from algorithms.warp import warp_image
from algorithms.wcs import TanSipWcs
from algorithms.zogy import scale_variance, zogy_subtract


def test_lanczos_warp_matches_shifted_truth() -> None:
    n = 200
    dst = TanSipWcs.simple((10.0, 20.0), (99.5, 99.5), 0.2, 0.0)
    src = TanSipWcs.simple((10.0, 20.0), (99.5 + 3.37, 99.5 - 2.61), 0.2, 0.4)
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(-20, 220, 80), rng.uniform(-20, 220, 80)
    ra, dec = dst.pixel_to_sky(xs, ys)
    sx, sy = src.sky_to_pixel(ra, dec)
    truth = np.zeros((n, n))
    render_moffat(truth, xs, ys, np.full(80, 1e4), np.full(80, 4.0), 3.5, 8.0)
    srcimg = np.zeros((n, n))
    render_moffat(srcimg, sx, sy, np.full(80, 1e4), np.full(80, 4.0), 3.5, 8.0)
    var = np.ones((n, n), np.float32)
    wr = warp_image(srcimg.astype(np.float32), var, mk.new_mask((n, n)), src, dst, (n, n))
    good = (wr.mask & mk.NO_DATA) == 0
    assert 0.9 < wr.coverage < 1.0
    assert np.abs(wr.image - truth)[good].max() < 0.01 * truth.max()
    assert np.all(wr.mask[~good] & mk.NO_DATA)
    assert np.all(wr.variance[good] <= 1.0 + 1e-6) and np.all(wr.variance[good] > 0.3)


def _pair(seed: int, transient_flux: float, n: int = 256):
    rng = np.random.default_rng(seed)
    ps, pt = moffat_kernel(4.0, 3.5, 31), moffat_kernel(3.2, 3.5, 31)
    x, y = rng.uniform(10, n - 10, 60), rng.uniform(10, n - 10, 60)
    f = 10 ** rng.uniform(3, 5, 60)
    sci = np.zeros((n, n))
    tmp = np.zeros((n, n))
    render_moffat(sci, x, y, f, np.full(60, 4.0), 3.5, 7.0)
    render_moffat(tmp, x, y, f, np.full(60, 3.2), 3.5, 7.0)
    c = n / 2
    render_moffat(
        sci,
        np.array([c + 0.3]),
        np.array([c - 0.4]),
        np.array([transient_flux]),
        np.array([4.0]),
        3.5,
        7.0,
    )
    sv = np.full((n, n), 900.0) + sci
    tv = np.full((n, n), 100.0) + tmp
    sci += rng.standard_normal((n, n)) * np.sqrt(sv)
    tmp += rng.standard_normal((n, n)) * np.sqrt(tv)
    m = mk.new_mask((n, n))
    return (
        sci.astype(np.float32),
        sv.astype(np.float32),
        tmp.astype(np.float32),
        tv.astype(np.float32),
        m,
        ps,
        pt,
    )


def test_zogy_noise_psf_and_transient_flux() -> None:
    sci, sv, tmp, tv, m, ps, pt = _pair(1, 5000.0)
    zr = zogy_subtract(sci, sv, m, tmp, tv, m, ps, pt)
    assert zr.fft_shape[0] == sfft.next_fast_len(zr.fft_shape[0], real=True)
    assert abs(zr.psf.sum() - 1.0) < 1e-6
    assert zr.kernel_science.shape[0] % 2 == 1 and np.isfinite(zr.kernel_template).all()
    assert zr.image.dtype == np.float32 and np.isfinite(zr.image).all()
    away = np.ones(sci.shape, bool)
    away[108:148, 108:148] = False
    z = (zr.image / np.sqrt(zr.variance))[20:-20, 20:-20][away[20:-20, 20:-20]]
    assert 0.9 < np.std(z) < 1.15
    ratio = scale_variance(zr.image, zr.variance, zr.mask)
    assert 0.8 < ratio < 1.3
    fit = psf_fit(zr.image, zr.variance, None, KernelPsf(zr.psf), 128.0, 128.0)
    assert abs(fit.x - 128.3) < 0.2 and abs(fit.y - 127.6) < 0.2
    assert abs(fit.flux - 5000.0 * ps.sum()) < 4 * fit.flux_err


def test_zogy_flux_pulls_over_many_realisations() -> None:
    pulls = []
    for seed in range(20):
        sci, sv, tmp, tv, m, ps, pt = _pair(10 + seed, 3000.0, n=128)
        zr = zogy_subtract(sci, sv, m, tmp, tv, m, ps, pt)
        fit = psf_fit(zr.image, zr.variance, None, KernelPsf(zr.psf), 64.3, 63.6, n_iter=1)
        pulls.append((fit.flux - 3000.0 * ps.sum()) / fit.flux_err)
    p = np.array(pulls)
    assert abs(p.mean()) < 0.6 and 0.6 < p.std() < 1.4
