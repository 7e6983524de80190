"""Adaptive (elliptical-Gaussian-weighted) second moments, as HSM / SdssShape."""

from __future__ import annotations

from dataclasses import dataclass

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
    ny, nx = image.shape
    cxx, cyy, cxy = sigma0**2, sigma0**2, 0.0
    cx, cy = float(x), float(y)
    ok = False
    flux = float("nan")
    for _ in range(max_iter):
        half = int(np.ceil(4.0 * np.sqrt(max(cxx, cyy))))
        x0, x1 = max(0, round(cx) - half), min(nx, round(cx) + half + 1)
        y0, y1 = max(0, round(cy) - half), min(ny, round(cy) + half + 1)
        if x1 - x0 < 3 or y1 - y0 < 3:
            break
        sub = image[y0:y1, x0:x1]
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx = xx - cx
        dy = yy - cy
        det = cxx * cyy - cxy * cxy
        if det <= 0:
            break
        q = (cyy * dx * dx - 2 * cxy * dx * dy + cxx * dy * dy) / det
        w = np.exp(-0.5 * q) * sub
        s = w.sum()
        if not np.isfinite(s) or s <= 0:
            break
        mx = (w * dx).sum() / s
        my = (w * dy).sum() / s
        mxx = (w * (dx - mx) ** 2).sum() / s
        myy = (w * (dy - my) ** 2).sum() / s
        mxy = (w * (dx - mx) * (dy - my)).sum() / s
        nxx, nyy, nxy = 2 * mxx, 2 * myy, 2 * mxy
        if nxx <= 0.05 or nyy <= 0.05 or nxx * nyy - nxy**2 <= 0:
            break
        shift = abs(mx) + abs(my)
        change = abs(nxx - cxx) + abs(nyy - cyy) + abs(nxy - cxy)
        cx, cy = cx + mx, cy + my
        cxx, cyy, cxy = nxx, nyy, nxy
        flux = float(2.0 * s)
        if abs(cx - x) > 3 * half or abs(cy - y) > 3 * half or cxx > 400 or cyy > 400:
            break
        if shift < tol and change < tol * (cxx + cyy):
            ok = True
            break
    return Moments(x=cx, y=cy, ixx=cxx, iyy=cyy, ixy=cxy, flux=flux, ok=ok)
