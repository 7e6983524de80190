"""A cheap, feature-based real/bogus score for DIASources (no trained model).

Artefacts in difference images are mostly cosmic rays and hot pixels (narrower than the
PSF), bad subtractions around bright stars (dipoles, poor PSF χ², a flux change of a few
per cent of a bright template source), defects or saturation (flagged pixels) and sources
on the CCD edge. For the bright-star residuals the PSF-flux error is given a systematic
floor of ``SYSTEMATIC_FRACTION`` × template flux, and the significance lost to that floor
(counted up to S/N 5) is penalised: this also down-weights real variability of bright stars
below ~10 % amplitude. Each feature adds a penalty; reliability = exp(−Σ penalties) ∈ (0, 1].
"""

from __future__ import annotations

import numpy as np

RELIABILITY_VERSION = "features-2"

#: PSF-matching residuals scale with the flux of the source underneath; a difference flux
#: below ~2 % of the template flux is within what PSF-model errors leave behind.
SYSTEMATIC_FRACTION = 0.02


def reliability_score(row: np.void, size_ratio: float) -> float:
    penalty = 0.0
    nd = max(int(row["psfNdata"]), 1)
    red_chi2 = float(row["psfChi2"]) / nd if np.isfinite(row["psfChi2"]) else 10.0
    penalty += 0.7 * max(0.0, red_chi2 - 1.5)
    if np.isfinite(size_ratio):
        penalty += 6.0 * max(0.0, 0.75 - size_ratio)
    else:
        penalty += 0.2
    if row["isDipole"]:
        penalty += 1.5
    for flag, weight in (
        ("pixelFlags_crCenter", 3.0),
        ("pixelFlags_saturatedCenter", 2.0),
        ("pixelFlags_interpolatedCenter", 1.5),
        ("pixelFlags_suspectCenter", 1.0),
        ("pixelFlags_nodataCenter", 2.0),
        ("pixelFlags_cr", 0.5),
        ("pixelFlags_bad", 0.5),
        ("pixelFlags_edge", 1.0),
    ):
        if row[flag]:
            penalty += weight
    penalty += 0.6 * _significance_loss(row)
    if row["centroid_flag"] or row["psfFlux_flag"]:
        penalty += 1.0
    return float(np.exp(-penalty))


def _significance_loss(row: np.void) -> float:
    """S/N (capped at 5) lost when the flux error gets the PSF-matching systematic floor."""
    f, fe = abs(float(row["psfFlux"])), float(row["psfFluxErr"])
    tf = float(row["templateFlux"])
    if not (np.isfinite(f) and np.isfinite(fe) and fe > 0 and np.isfinite(tf) and tf > 0):
        return 0.0
    snr_sys = f / float(np.hypot(fe, SYSTEMATIC_FRACTION * tf))
    return max(0.0, min(f / fe, 5.0) - snr_sys)
