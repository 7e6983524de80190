"""Adaptive (elliptical-Gaussian-weighted) second moments, as HSM / SdssShape."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Moments:
    x: float
    y: float
    ixx: float
    iyy: float
    ixy: float
    flux: float
    ok: bool

    @property
    def sigma(self) -> float:
        """Determinant radius: (ixx·iyy − ixy²)^¼, σ for a round Gaussian."""
        det = self.ixx * self.iyy - self.ixy**2
        return float(det**0.25) if det > 0 else float("nan")


def adaptive_moments(
    image: np.ndarray,
    x: float,
    y: float,
    sigma0: float = 2.0,
    max_iter: int = 30,
    tol: float = 1e-4,
) -> Moments:
    """Iterate weighted moments with a Gaussian weight matched to the object.

    For a Gaussian object of covariance C, moments under a weight of covariance C equal C/2,
    hence the factor 2. Returns ``ok=False`` if the iteration diverges.
    """
    img = image if image.dtype in (np.float32, np.float64) else image.astype(np.float64)
    cx, cy, cxx, cyy, cxy, flux, ok = _adaptive(img, float(x), float(y), sigma0, max_iter, tol)
    return Moments(x=cx, y=cy, ixx=cxx, iyy=cyy, ixy=cxy, flux=flux, ok=ok)


@numba.njit(cache=True, nogil=True)
def _adaptive(
    image: np.ndarray, x: float, y: float, sigma0: float, max_iter: int, tol: float
) -> tuple[float, float, float, float, float, float, bool]:
    ny, nx = image.shape
    cxx, cyy, cxy = sigma0**2, sigma0**2, 0.0
    cx, cy = x, y
    ok = False
    flux = np.nan
    for _ in range(max_iter):
        half = int(np.ceil(4.0 * np.sqrt(max(cxx, cyy))))
        rx, ry = int(np.round(cx)), int(np.round(cy))
        x0, x1 = max(0, rx - half), min(nx, rx + half + 1)
        y0, y1 = max(0, ry - half), min(ny, ry + half + 1)
        if x1 - x0 < 3 or y1 - y0 < 3:
            break
        det = cxx * cyy - cxy * cxy
        if det <= 0:
            break
        s = sx = sy = sxx = syy = sxy = 0.0
        for yy in range(y0, y1):
            dy = yy - cy
            for xx in range(x0, x1):
                dx = xx - cx
                q = (cyy * dx * dx - 2 * cxy * dx * dy + cxx * dy * dy) / det
                w = np.exp(-0.5 * q) * image[yy, xx]
                s += w
                sx += w * dx
                sy += w * dy
                sxx += w * dx * dx
                syy += w * dy * dy
                sxy += w * dx * dy
        if not np.isfinite(s) or s <= 0:
            break
        mx, my = sx / s, sy / s
        mxx = sxx / s - mx * mx
        myy = syy / s - my * my
        mxy = sxy / s - mx * my
        nxx, nyy, nxy = 2 * mxx, 2 * myy, 2 * mxy
        if nxx <= 0.05 or nyy <= 0.05 or nxx * nyy - nxy**2 <= 0:
            break
        shift = abs(mx) + abs(my)
        change = abs(nxx - cxx) + abs(nyy - cyy) + abs(nxy - cxy)
        cx, cy = cx + mx, cy + my
        cxx, cyy, cxy = nxx, nyy, nxy
        flux = 2.0 * s
        if abs(cx - x) > 3 * half or abs(cy - y) > 3 * half or cxx > 400 or cyy > 400:
            break
        if shift < tol and change < tol * (cxx + cyy):
            ok = True
            break
    return cx, cy, cxx, cyy, cxy, flux, ok
