"""Photometry primitives: PSF fit (position + flux), forced PSF flux, aperture flux."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms import mask as mk
from algorithms.psf import Psf


@dataclass(frozen=True)
class PsfFit:
    x: float
    y: float
    x_err: float
    y_err: float
    xy_cov: float
    flux: float
    flux_err: float
    chi2: float
    ndata: int
    lnl: float
    edge: bool
    ok: bool


def _overlap(
    shape: tuple[int, int], x0: int, y0: int, size: int
) -> tuple[slice, slice, slice, slice] | None:
    ny, nx = shape
    ax0, ay0 = max(x0, 0), max(y0, 0)
    ax1, ay1 = min(x0 + size, nx), min(y0 + size, ny)
    if ax1 <= ax0 or ay1 <= ay0:
        return None
    return (
        slice(ay0, ay1),
        slice(ax0, ax1),
        slice(ay0 - y0, ay1 - y0),
        slice(ax0 - x0, ax1 - x0),
    )


def _weights(variance: np.ndarray, mask: np.ndarray | None, bad_bits: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        w = np.where(np.isfinite(variance) & (variance > 0), 1.0 / variance, 0.0)
    if mask is not None:
        w = np.where((mask & bad_bits) != 0, 0.0, w)
    return w


def forced_psf_flux(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    psf: Psf,
    x: float,
    y: float,
    bad_bits: int = mk.NO_DATA | mk.SAT | mk.BAD,
) -> tuple[float, float, float, int, bool]:
    """Linear PSF flux at a fixed position: (flux, err, chi2, ndata, truncated)."""
    k, x0, y0 = psf.realize(x, y)
    ov = _overlap(image.shape, x0, y0, k.shape[0])
    if ov is None:
        return np.nan, np.nan, np.nan, 0, True
    iy, ix, ky, kx = ov
    p = k[ky, kx]
    d = image[iy, ix].astype(np.float64)
    w = _weights(
        variance[iy, ix].astype(np.float64), None if mask is None else mask[iy, ix], bad_bits
    )
    a = float((p * p * w).sum())
    if a <= 0:
        return np.nan, np.nan, np.nan, 0, True
    f = float((p * d * w).sum()) / a
    chi2 = float((((d - f * p) ** 2) * w).sum())
    return f, 1.0 / np.sqrt(a), chi2, int((w > 0).sum()), p.shape != k.shape


def psf_fit(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    psf: Psf,
    x: float,
    y: float,
    n_iter: int = 4,
    bad_bits: int = mk.NO_DATA | mk.SAT | mk.BAD,
) -> PsfFit:
    """Weighted least-squares fit of flux and position (Gauss–Newton on a shifted PSF)."""
    cx, cy = float(x), float(y)
    ok = True
    cov = np.full((3, 3), np.nan)
    f = np.nan
    chi2, nd, edge, lnl = np.nan, 0, True, np.nan
    for it in range(n_iter):
        k, x0, y0 = psf.realize(cx, cy)
        ov = _overlap(image.shape, x0, y0, k.shape[0])
        if ov is None:
            ok = False
            break
        iy, ix, ky, kx = ov
        edge = k[ky, kx].shape != k.shape
        gy, gx = np.gradient(k)
        p, dpx, dpy = k[ky, kx], -gx[ky, kx], -gy[ky, kx]
        d = image[iy, ix].astype(np.float64)
        var = variance[iy, ix].astype(np.float64)
        w = _weights(var, None if mask is None else mask[iy, ix], bad_bits)
        a = float((p * p * w).sum())
        if a <= 0:
            ok = False
            break
        f = float((p * d * w).sum()) / a
        nd = int((w > 0).sum())
        jac = np.stack([p.ravel(), (f * dpx).ravel(), (f * dpy).ravel()], axis=1)
        wr = w.ravel()
        r = (d - f * p).ravel()
        chi2 = float((r * r * wr).sum())
        valid = wr > 0
        lnl = float(-0.5 * chi2 - 0.5 * np.log(2 * np.pi / wr[valid]).sum())
        fisher = jac.T @ (jac * wr[:, None])
        try:
            cov = np.linalg.inv(fisher)
        except np.linalg.LinAlgError:
            ok = False
            break
        if it == n_iter - 1:
            break
        step = cov @ (jac.T @ (r * wr))
        dx, dy = float(np.clip(step[1], -1, 1)), float(np.clip(step[2], -1, 1))
        cx, cy = cx + dx, cy + dy
        if abs(cx - x) > 3 or abs(cy - y) > 3:
            cx, cy, ok = float(x), float(y), False
        if abs(dx) + abs(dy) < 1e-3:
            n_iter = it + 2
    if not np.all(np.isfinite(cov)) or cov[0, 0] <= 0:
        ok = False
    if not (0 <= cx < image.shape[1] and 0 <= cy < image.shape[0]):
        ok = False
    fe = float(1.0 / np.sqrt(max(a, 1e-300))) if ok else np.nan
    return PsfFit(
        x=cx,
        y=cy,
        x_err=float(np.sqrt(abs(cov[1, 1]))),
        y_err=float(np.sqrt(abs(cov[2, 2]))),
        xy_cov=float(cov[1, 2]),
        flux=f,
        flux_err=fe,
        chi2=chi2,
        ndata=nd,
        lnl=lnl,
        edge=edge,
        ok=ok,
    )


def aperture_flux(
    image: np.ndarray,
    variance: np.ndarray,
    x: float,
    y: float,
    radius: float,
) -> tuple[float, float, bool]:
    """Circular aperture sum with exact-ish sub-pixel weights (4×4 supersampling at the rim)."""
    ny, nx = image.shape
    r = radius + 1
    x0, x1 = int(np.floor(x - r)), int(np.ceil(x + r)) + 1
    y0, y1 = int(np.floor(y - r)), int(np.ceil(y + r)) + 1
    truncated = x0 < 0 or y0 < 0 or x1 > nx or y1 > ny
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx), min(y1, ny)
    if x1 <= x0 or y1 <= y0:
        return np.nan, np.nan, True
    yy, xx = np.mgrid[y0:y1, x0:x1]
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    frac = np.zeros(xx.shape)
    for sy in sub:
        for sx in sub:
            frac += ((xx + sx - x) ** 2 + (yy + sy - y) ** 2) <= radius**2
    frac /= 16.0
    v = variance[y0:y1, x0:x1].astype(np.float64)
    good = np.isfinite(v)
    flux = float((frac * image[y0:y1, x0:x1] * good).sum())
    err = float(np.sqrt((frac**2 * np.where(good, v, 0.0)).sum()))
    return flux, err, truncated
