"""Photometric zeropoint from matched reference stars (AB, fluxes in nJy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: AB magnitude of 1 nJy: m = −2.5 log10(f / 3631 Jy).
AB_NJY_ZP = 31.4


@dataclass(frozen=True)
class PhotoCalib:
    """``nJy = calibration × counts``; ``zeropoint`` is the AB mag of one count (electron)."""

    calibration: float
    calibration_err: float
    zeropoint: float
    n_stars: int

    def to_njy(self, counts: np.ndarray | float) -> np.ndarray | float:
        return counts * self.calibration


def fit_zeropoint(
    inst_flux: np.ndarray,
    inst_flux_err: np.ndarray,
    ref_flux_njy: np.ndarray,
    min_stars: int = 3,
    min_snr: float = 20.0,
) -> PhotoCalib:
    """Clipped, inverse-variance weighted mean of the per-star ratio ref / instrumental."""
    f, e, r = (np.asarray(a, dtype=float) for a in (inst_flux, inst_flux_err, ref_flux_njy))
    good = np.isfinite(f) & np.isfinite(e) & np.isfinite(r) & (f > 0) & (r > 0) & (f > min_snr * e)
    if good.sum() < min_stars:
        raise ValueError(f"only {int(good.sum())} usable photometric stars (need {min_stars})")
    mag = -2.5 * np.log10(r[good] / f[good])
    merr = np.hypot(1.0857 * e[good] / f[good], 0.003)
    keep = np.ones(mag.size, dtype=bool)
    for _ in range(5):
        med = np.median(mag[keep])
        mad = 1.4826 * np.median(np.abs(mag[keep] - med))
        new = np.abs(mag - med) < max(3.0 * mad, 3.0 * np.median(merr))
        if new.sum() < min_stars or np.array_equal(new, keep):
            break
        keep = new
    w = 1.0 / merr[keep] ** 2
    dm = float((mag[keep] * w).sum() / w.sum())
    scatter = float(np.std(mag[keep]) / np.sqrt(keep.sum()))
    err = max(float(1.0 / np.sqrt(w.sum())), scatter)
    calib = 10 ** (-0.4 * dm)
    return PhotoCalib(
        calibration=calib,
        calibration_err=calib * err / 1.0857,
        zeropoint=AB_NJY_ZP + dm,
        n_stars=int(keep.sum()),
    )
