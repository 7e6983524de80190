"""Dipole model: a positive and a negative PSF with free positions and fluxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from algorithms import mask as mk
from algorithms.psf import Psf


@dataclass(frozen=True)
class DipoleFit:
    x: float
    y: float
    dx: float
    dy: float
    mean_flux: float
    mean_flux_err: float
    flux_diff: float
    flux_diff_err: float
    chi2: float
    ndata: int
    is_dipole: bool


def _place(psf: Psf, x: float, y: float, x0: int, y0: int, shape: tuple[int, int]) -> np.ndarray:
    k, kx0, ky0 = psf.realize(x, y)
    out = np.zeros(shape)
    s = k.shape[0]
    ox, oy = kx0 - x0, ky0 - y0
    ax0, ay0 = max(ox, 0), max(oy, 0)
    ax1, ay1 = min(ox + s, shape[1]), min(oy + s, shape[0])
    if ax1 > ax0 and ay1 > ay0:
        out[ay0:ay1, ax0:ax1] = k[ay0 - oy : ay1 - oy, ax0 - ox : ax1 - ox]
    return out


def fit_dipole(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: Psf,
    pos_peak: np.void,
    neg_peak: np.void,
    min_lobe_snr: float = 3.0,
    max_net_snr: float = 3.0,
) -> DipoleFit:
    """Least-squares fit of f₊·P(x₊) − f₋·P(x₋) on a stamp around both peaks.

    ``is_dipole`` (an artefact: a registration or PSF error on a static source) requires both
    lobes detected at ``min_lobe_snr`` and a net flux f₊ − f₋ within ``max_net_snr`` σ of 0.
    """
    ny, nx = image.shape
    half = psf.size // 2 + 2
    xa = [float(pos_peak["x"]), float(neg_peak["x"])]
    ya = [float(pos_peak["y"]), float(neg_peak["y"])]
    x0, x1 = max(int(min(xa)) - half, 0), min(int(max(xa)) + half + 1, nx)
    y0, y1 = max(int(min(ya)) - half, 0), min(int(max(ya)) + half + 1, ny)
    d = image[y0:y1, x0:x1].astype(np.float64)
    v = variance[y0:y1, x0:x1].astype(np.float64)
    good = np.isfinite(v) & (v > 0) & ((mask[y0:y1, x0:x1] & (mk.NO_DATA | mk.SAT)) == 0)
    w = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
    sw = np.sqrt(w)
    shape = d.shape

    def model(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = _place(psf, p[0], p[1], x0, y0, shape)
        b = _place(psf, p[2], p[3], x0, y0, shape)
        return a, b

    def resid(p: np.ndarray) -> np.ndarray:
        a, b = model(p)
        return ((d - p[4] * a + p[5] * b) * sw).ravel()

    f0 = max(abs(float(pos_peak["value"])), 1.0) * 2 * np.pi * psf.sigma_at(xa[0], ya[0]) ** 2
    p0 = np.array([xa[0], ya[0], xa[1], ya[1], f0, f0])
    sol = least_squares(resid, p0, method="lm", max_nfev=200, x_scale=[1, 1, 1, 1, f0, f0])
    p = sol.x
    a, b = model(p)
    design = np.stack([a.ravel(), -b.ravel()], axis=1) * sw.ravel()[:, None]
    try:
        cov = np.linalg.inv(design.T @ design)
    except np.linalg.LinAlgError:
        cov = np.full((2, 2), np.nan)
    fp, fn = float(p[4]), float(p[5])
    ep, en = float(np.sqrt(abs(cov[0, 0]))), float(np.sqrt(abs(cov[1, 1])))
    cpn = float(cov[0, 1])
    mean_err = 0.5 * np.sqrt(max(ep**2 + en**2 + 2 * cpn, 0.0))
    xc, yc = 0.5 * (p[0] + p[2]), 0.5 * (p[1] + p[3])
    # Close lobes trade flux for separation, so f₊ − f₋ is ill-determined; the net flux is
    # the linear fit of a PSF and its two gradients (a shifted PSF, to first order) there.
    net, net_err = _net_flux(psf, xc, yc, x0, y0, d, w)
    both = fp > min_lobe_snr * ep and fn > min_lobe_snr * en
    # Both lobes and no net flux change: what a misregistered static source (or a PSF
    # mismatch) leaves. A real variable that also moved a little keeps a net flux.
    is_dip = both and abs(net) < max_net_snr * net_err
    return DipoleFit(
        x=xc,
        y=yc,
        dx=float(p[0] - p[2]),
        dy=float(p[1] - p[3]),
        mean_flux=0.5 * (fp + fn),
        mean_flux_err=float(mean_err),
        flux_diff=net,
        flux_diff_err=net_err,
        chi2=float(2.0 * sol.cost),
        ndata=int(good.sum()),
        is_dipole=bool(is_dip),
    )


def _net_flux(
    psf: Psf, x: float, y: float, x0: int, y0: int, d: np.ndarray, w: np.ndarray
) -> tuple[float, float]:
    """Weighted linear fit of a·P + bx·∂P/∂x + by·∂P/∂y at (x, y): (a, σ_a)."""
    p = _place(psf, x, y, x0, y0, d.shape)
    gy, gx = np.gradient(p)
    a = np.stack([p.ravel(), gx.ravel(), gy.ravel()], axis=1)
    wr = w.ravel()
    fisher = a.T @ (a * wr[:, None])
    try:
        cov = np.linalg.inv(fisher)
    except np.linalg.LinAlgError:
        return float("nan"), float("nan")
    coef = cov @ (a.T @ (d.ravel() * wr))
    return float(coef[0]), float(np.sqrt(max(cov[0, 0], 0.0)))


def drop_registration_dipoles(diasources: np.ndarray) -> np.ndarray:
    """The DIASources that are not registration artefacts by the dipole fit (``isDipole``:
    two lobes and no net change, a static source misregistered or mis-subtracted).

    On comcam 301 all 10 such DIASources matched nothing in the truth; a variable that also
    moved keeps its net change (``psfFlux``) and is not flagged, and a mover has no lobe in
    the template.
    """
    return diasources[~diasources["isDipole"].astype(bool)]
