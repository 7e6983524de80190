"""Photometry primitives: PSF fit (position + flux), forced PSF flux, aperture flux."""

from __future__ import annotations

from dataclasses import dataclass

import numba
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
    f, err = linear_flux(d, w, p)
    if np.isnan(err):
        return np.nan, np.nan, np.nan, 0, True
    chi2 = float((((d - f * p) ** 2) * w).sum())
    return f, err, chi2, int((w > 0).sum()), p.shape != k.shape


def linear_flux(d: np.ndarray, w: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """The weighted least-squares amplitude of the profile ``p`` in ``d`` (weights ``w``,
    0 where unused) and its error; NaN, NaN when no weight falls on the profile."""
    a = float((p * p * w).sum())
    if a <= 0:
        return np.nan, np.nan
    return float((p * d * w).sum()) / a, 1.0 / np.sqrt(a)


@numba.njit(cache=True, nogil=True)
def _grad(k: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """``np.gradient(k)`` (central differences, one-sided at the edges) at (i, j): (gy, gx)."""
    n0, n1 = k.shape
    if i == 0:
        gy = k[1, j] - k[0, j]
    elif i == n0 - 1:
        gy = k[i, j] - k[i - 1, j]
    else:
        gy = 0.5 * (k[i + 1, j] - k[i - 1, j])
    if j == 0:
        gx = k[i, 1] - k[i, 0]
    elif j == n1 - 1:
        gx = k[i, j] - k[i, j - 1]
    else:
        gx = 0.5 * (k[i, j + 1] - k[i, j - 1])
    return gy, gx


@numba.njit(cache=True, nogil=True, inline="always")
def _pixel_weight(
    variance: np.ndarray, mask: np.ndarray, has_mask: bool, bad_bits: int, i: int, j: int
) -> float:
    """1/variance of a usable pixel; 0 for a masked one or a variance that is not > 0."""
    v = np.float64(variance[i, j])
    if not (np.isfinite(v) and v > 0) or (has_mask and (mask[i, j] & bad_bits) != 0):
        return 0.0
    return 1.0 / v


@numba.njit(cache=True, nogil=True)
def _fit_step(
    k: np.ndarray, ky0: int, kx0: int, image: np.ndarray, variance: np.ndarray,
    mask: np.ndarray, has_mask: bool, iy0: int, iy1: int, ix0: int, ix1: int, bad_bits: int,
    fisher: np.ndarray, grad: np.ndarray,
) -> tuple[float, float, int, float, float]:  # fmt: skip
    """One Gauss–Newton step of ``psf_fit`` on the overlap of stamp and image, in one pass
    per sum: (a = Σp²w, flux, ndata, χ², ln L); fills the Fisher matrix and Jᵀ·W·r."""
    a = 0.0
    b = 0.0
    for i in range(iy0, iy1):
        for j in range(ix0, ix1):
            w = _pixel_weight(variance, mask, has_mask, bad_bits, i, j)
            if w == 0.0:
                continue
            p = k[ky0 + i - iy0, kx0 + j - ix0]
            a += p * p * w
            b += p * np.float64(image[i, j]) * w
    fisher[:] = 0.0
    grad[:] = 0.0
    if a <= 0:
        return a, np.nan, 0, np.nan, np.nan
    f = b / a
    nd = 0
    chi2 = 0.0
    lw = 0.0
    for i in range(iy0, iy1):
        for j in range(ix0, ix1):
            w = _pixel_weight(variance, mask, has_mask, bad_bits, i, j)
            if w == 0.0:
                continue
            ki, kj = ky0 + i - iy0, kx0 + j - ix0
            p = k[ki, kj]
            gy, gx = _grad(k, ki, kj)
            j0, j1, j2 = p, -f * gx, -f * gy
            r = np.float64(image[i, j]) - f * p
            nd += 1
            chi2 += r * r * w
            lw += np.log(2 * np.pi / w)
            fisher[0, 0] += j0 * j0 * w
            fisher[0, 1] += j0 * j1 * w
            fisher[0, 2] += j0 * j2 * w
            fisher[1, 1] += j1 * j1 * w
            fisher[1, 2] += j1 * j2 * w
            fisher[2, 2] += j2 * j2 * w
            grad[0] += j0 * r * w
            grad[1] += j1 * r * w
            grad[2] += j2 * r * w
    fisher[1, 0] = fisher[0, 1]
    fisher[2, 0] = fisher[0, 2]
    fisher[2, 1] = fisher[1, 2]
    return a, f, nd, chi2, -0.5 * chi2 - 0.5 * lw


_NO_MASK = np.zeros((1, 1), dtype=mk.MASK_DTYPE)


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
    a = 0.0
    chi2, nd, edge, lnl = np.nan, 0, True, np.nan
    fisher = np.zeros((3, 3))
    grad = np.zeros(3)
    msk = _NO_MASK if mask is None else mask
    for it in range(n_iter):
        k, x0, y0 = psf.realize(cx, cy)
        ov = _overlap(image.shape, x0, y0, k.shape[0])
        if ov is None:
            ok = False
            break
        iy, ix, ky, kx = ov
        edge = (iy.stop - iy.start, ix.stop - ix.start) != k.shape
        a, step_f, step_nd, step_chi2, step_lnl = _fit_step(
            np.asarray(k, dtype=np.float64), ky.start, kx.start, image, variance, msk,
            mask is not None, iy.start, iy.stop, ix.start, ix.stop, bad_bits, fisher, grad,
        )  # fmt: skip
        if a <= 0:
            ok = False
            break
        f, nd, chi2, lnl = step_f, step_nd, step_chi2, step_lnl
        try:
            cov = np.linalg.inv(fisher)
        except np.linalg.LinAlgError:
            ok = False
            break
        if it == n_iter - 1:
            break
        step = cov @ grad
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
