"""Alard–Lupton kernel fitting and subtraction on images with a known matching kernel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

from algorithms import mask as mk
from algorithms.alard_lupton import alard_lupton_subtract, fit_kernel, gaussian_basis
from algorithms.measure import psf_fit
from algorithms.pipeline import (
    PipelineConfig,
)
from algorithms.psf import KernelPsf, gaussian_kernel
from algorithms.synthetic import SimConfig, make_visit, moffat_kernel, render_moffat
from algorithms.synthetic_run import run_visit


def test_basis_normalisation() -> None:
    b = gaussian_basis(21)
    assert b.shape == (15 + 6 + 6, 21, 21)
    assert abs(b[0].sum() - 1.0) < 1e-12
    assert np.all(np.abs(b[1:].sum(axis=(1, 2))) < 1e-10)
    with pytest.raises(ValueError, match="odd"):
        gaussian_basis(20)


def _field(seed: int, n: int = 320, transient: float = 0.0):
    """Template with Moffat stars (FWHM 3.2); science = 1.25 × template ⊗ Gaussian(σ 1.3)."""
    rng = np.random.default_rng(seed)
    k = 120
    x, y = rng.uniform(20, n - 20, k), rng.uniform(20, n - 20, k)
    f = 10 ** rng.uniform(3.3, 5.0, k)
    tmpl = np.zeros((n, n))
    render_moffat(tmpl, x, y, f, np.full(k, 3.2), 3.5, 8.0)
    g = gaussian_kernel(1.3, 21)
    sci = 1.25 * fftconvolve(tmpl, g, mode="same")
    c = n / 2 + 0.3
    if transient:
        render_moffat(sci, np.array([c]), np.array([c]), np.array([transient]),
                      np.array([4.0]), 3.5, 8.0)  # fmt: skip
    sv = np.full((n, n), 400.0) + np.maximum(sci, 0)
    tv = np.full((n, n), 25.0)
    sci = sci + rng.standard_normal((n, n)) * np.sqrt(sv)
    tmpl = tmpl + rng.standard_normal((n, n)) * np.sqrt(tv)
    return (sci.astype(np.float32), sv.astype(np.float32), tmpl.astype(np.float32),
            tv.astype(np.float32), x, y, f, g, c)  # fmt: skip


def test_kernel_recovers_known_convolution() -> None:
    sci, sv, tmpl, _tv, x, y, f, g, _ = _field(1)
    m = mk.new_mask(sci.shape)
    sol = fit_kernel(sci, sv, tmpl, m, x[f > 5e3], y[f > 5e3], spatial_order=0)
    k = sol.kernel_at(160, 160)
    assert abs(k.sum() - 1.25) < 0.01
    # Pixel-scale kernel structure is unconstrained by a band-limited template; what must
    # match is the template PSF convolved with the kernel.
    p = moffat_kernel(3.2, 3.5, 41)
    got, want = fftconvolve(p, k, mode="same"), fftconvolve(p, 1.25 * g, mode="same")
    assert np.abs(got - want).max() < 0.01 * want.max()
    yy, xx = np.mgrid[-10:11, -10:11]
    assert abs((k * xx).sum() / k.sum()) < 0.02 and abs((k * yy).sum() / k.sum()) < 0.02
    assert sol.n_stamps >= 10 and 0.7 < sol.chi2 < 1.4


def test_subtraction_noise_and_transient_flux() -> None:
    sci, sv, tmpl, tv, x, y, f, _g, c = _field(2, transient=20000.0)
    m = mk.new_mask(sci.shape)
    psf = moffat_kernel(4.0, 3.5, 31)
    zr, _sol = alard_lupton_subtract(sci, sv, m, tmpl, tv, m, psf, x[f > 5e3], y[f > 5e3],
                                    spatial_order=0)  # fmt: skip
    assert zr.image.dtype == np.float32 and np.isfinite(zr.image).all()
    away = np.ones(sci.shape, bool)
    away[int(c) - 20 : int(c) + 20, int(c) - 20 : int(c) + 20] = False
    z = (zr.image / np.sqrt(zr.variance))[25:-25, 25:-25][away[25:-25, 25:-25]]
    assert 0.9 < np.std(z) < 1.15
    fit = psf_fit(zr.image, zr.variance, None, KernelPsf(zr.psf), c, c)
    assert abs(fit.x - c) < 0.2 and abs(fit.y - c) < 0.2
    assert abs(fit.flux - 20000.0 * psf.sum()) < 4 * fit.flux_err


def test_too_few_stamps_is_an_error() -> None:
    sci, sv, tmpl, _tv, x, y, _f, _g, _ = _field(3)
    m = mk.new_mask(sci.shape)
    with pytest.raises(ValueError, match="usable kernel stamps"):
        fit_kernel(sci, sv, tmpl, m, x[:2], y[:2])
    m[:] = mk.SAT
    with pytest.raises(ValueError, match="usable kernel stamps"):
        fit_kernel(sci, sv, tmpl, m, x, y)


def test_pipeline_with_alard_lupton_finds_transients() -> None:
    v = make_visit(SimConfig(seed=21))
    r = run_visit(v, PipelineConfig(subtraction="alard_lupton"))
    assert r.ok, r.flags
    assert r.summary["al_n_stamps"] >= 10
    d, tt = r.diasources, v.truth_transients
    dist, _ = cKDTree(np.stack([d["x"], d["y"]], 1)).query(np.stack([tt["x"], tt["y"]], 1))
    assert (dist < 2.0)[tt["snr"] >= 7].mean() >= 0.95
    r2 = run_visit(v, PipelineConfig(subtraction="bogus"))
    assert not r2.ok and any("unknown subtraction" in f for f in r2.flags)
