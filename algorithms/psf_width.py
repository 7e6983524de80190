"""How much wider or narrower than the PSF model the stars are across a CCD, and the PSF-flux
correction that follows (an aperture correction measured by widths, not by apertures).

A PSF fit with a model narrower than the source underestimates its flux by about the
fractional difference in width (first order; a slope of −0.97 measured on the `mini` nights'
transients). When a CCD has too few PSF stars for a spatially varying model (fewer than 80),
its model is one constant PSF while the true PSF changes by a few per cent in width across
it, so a source's PSF flux is off by that much, the same way at every visit: on the `mini`
training nights that was 1.2 % rms, and the pulls of bright transients widened (robust σ
1.36 at true S/N 50–100). Aperture fluxes, Rubin's usual measure of this, are spoilt by
neighbours in a crowded field; an adaptive-moment width at each bright star is local.

The width offset δ = √(T_star / T_model) − 1 (T = Ixx + Iyy, the model measured the same
way at the same position) is fitted as a + b·u + c·v across the CCD. The zeropoint was
fitted on the stars' PSF fluxes, so it already holds their mean offset; a source at (x, y)
is corrected by (1 − δ̄) / (1 − δ(x, y)), δ̄ the map's mean over the calibration stars,
and its error gains the map's own uncertainty there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from algorithms.moments import adaptive_moments
from algorithms.psf import Psf, ccd_poly_terms

#: Stars below this S/N measure a width too noisily to help (σ_δ ≈ 1/S/N).
MIN_SNR = 50.0
#: Fewest stars with a usable width for a map; fewer leave fluxes as they are.
MIN_STARS = 8
#: Width noise beyond S/N that every star carries (neighbours, pixelisation).
WIDTH_FLOOR = 0.005
#: A star whose offset is this many σ from the map is left out (a blend, a galaxy).
CLIP_SIGMA = 3.0
#: The largest correction believed; larger offsets mean the measurement failed.
MAX_OFFSET = 0.1


@dataclass(frozen=True)
class WidthMap:
    """δ(x, y) = a + b·u + c·v, u and v in [−1, 1] across a CCD of ``shape`` (ny, nx)."""

    coef: NDArray[np.float64]
    cov: NDArray[np.float64]
    shape: tuple[int, int]
    n_stars: int
    reference: float = 0.0

    def offset(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """δ and its standard error at each (x, y)."""
        t = ccd_poly_terms(x, y, self.shape, 1)
        delta = t @ self.coef
        err = np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", t, self.cov, t), 0.0))
        return np.clip(delta, -MAX_OFFSET, MAX_OFFSET), err

    def calibrated(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> WidthMap:
        """This map with ``reference``, its mean over the calibration stars at (x, y)."""
        ref = float(np.mean(self.offset(x, y)[0])) if len(x) else 0.0
        return WidthMap(self.coef, self.cov, self.shape, self.n_stars, ref)

    def flux_factor(
        self, x: NDArray[np.float64], y: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The factor a PSF flux at (x, y) is multiplied by, and the fractional error of it."""
        delta, err = self.offset(x, y)
        return (1.0 - self.reference) / (1.0 - delta), err


def star_width_offsets(
    image: NDArray[np.floating], psf: Psf, x: NDArray[np.float64], y: NDArray[np.float64]
) -> NDArray[np.float64]:
    """δ at each star (NaN where the moments fail), the model measured at the same spot."""
    out = np.full(len(x), np.nan)
    kern: NDArray[np.float64] | None = None
    model = None
    for k, (xs, ys) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        at = psf.kernel_at(xs, ys)
        if at is not kern:
            kern, c = at, at.shape[0] // 2
            model = adaptive_moments(kern, c, c, sigma0=1.5)
        if model is None or not model.ok or not model.ixx + model.iyy > 0:
            continue
        star = adaptive_moments(image, xs, ys, sigma0=model.sigma)
        t = star.ixx + star.iyy
        if star.ok and t > 0 and np.hypot(star.x - xs, star.y - ys) < 1.0:
            out[k] = np.sqrt(t / (model.ixx + model.iyy)) - 1.0
    return out


def fit_width_map(
    image: NDArray[np.floating], psf: Psf, stars: np.ndarray, min_stars: int = MIN_STARS
) -> WidthMap | None:
    """The width map from the measured ``stars`` (x, y, flux, fluxErr) with S/N ≥ ``MIN_SNR``;
    None when fewer than ``min_stars`` give a width."""
    snr = np.asarray(stars["flux"], np.float64) / np.asarray(stars["fluxErr"], np.float64)
    use = np.isfinite(snr) & (snr >= MIN_SNR)
    use &= np.isfinite(stars["x"]) & np.isfinite(stars["y"])
    x = np.asarray(stars["x"], np.float64)[use]
    y = np.asarray(stars["y"], np.float64)[use]
    snr = snr[use]
    delta = star_width_offsets(image, psf, x, y)
    ok = np.isfinite(delta) & (np.abs(delta) < MAX_OFFSET)
    if ok.sum() < min_stars:
        return None
    x, y, delta, snr = x[ok], y[ok], delta[ok], snr[ok]
    sigma = np.hypot(1.0 / snr, WIDTH_FLOOR)
    shape = (int(image.shape[0]), int(image.shape[1]))
    terms = ccd_poly_terms(x, y, shape, 1)
    keep = np.ones(len(delta), bool)
    coef, cov = np.zeros(3), np.zeros((3, 3))
    for _ in range(5):
        if keep.sum() < min_stars:
            return None
        w = 1.0 / sigma[keep] ** 2
        a = terms[keep] * w[:, None]
        normal = terms[keep].T @ a
        try:
            cov = np.linalg.inv(normal)
        except np.linalg.LinAlgError:
            return None
        coef = cov @ (a.T @ delta[keep])
        resid = (delta - terms @ coef) / sigma
        chi2 = float(np.sum(resid[keep] ** 2) / max(int(keep.sum()) - 3, 1))
        new = np.abs(resid) < CLIP_SIGMA * max(np.sqrt(chi2), 1.0)
        if np.array_equal(new, keep):
            break
        keep = new
    cov = cov * max(chi2, 1.0)
    return WidthMap(coef, cov, shape, int(keep.sum()))


def correct_psf_fluxes(dia: np.ndarray, width: WidthMap | None) -> None:
    """Correct the single-PSF ``psfFlux`` and every ``scienceFlux`` of DIASources for the PSF
    model's width at their position (in place); errors scale with them and gain the map's
    own uncertainty. Dipole fits, failed fits and sources without a position keep their flux."""
    if width is None or not len(dia):
        return
    factor, ferr = width.flux_factor(dia["x"], dia["y"])
    placed = np.isfinite(factor) & np.isfinite(ferr)
    one = ~dia["dipoleFitAttempted"] & ~dia["psfFlux_flag"] & np.isfinite(dia["psfFlux"])
    for flux, err, rows in (
        ("psfFlux", "psfFluxErr", one),
        ("scienceFlux", "scienceFluxErr", None),
    ):
        sel = placed & (np.isfinite(dia[flux]) if rows is None else rows)
        f = dia[flux][sel].astype(np.float64) * factor[sel]
        e = np.hypot(dia[err][sel].astype(np.float64) * factor[sel], ferr[sel] * np.abs(f))
        dia[flux][sel] = f.astype(dia[flux].dtype)
        dia[err][sel] = e.astype(dia[err].dtype)
