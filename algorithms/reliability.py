"""A cheap, feature-based real/bogus score for DIASources (no trained model).

Artefacts in difference images are mostly cosmic rays and hot pixels (narrower than the
PSF), bad subtractions around bright stars (dipoles, poor PSF χ², a flux change of a few
per cent of a bright template source) and defects or saturation (flagged pixels). The last
rule also down-weights real low-amplitude variability of bright stars. Each feature adds a
penalty; reliability = exp(−Σ penalties) ∈ (0, 1].
"""

from __future__ import annotations

import numpy as np

RELIABILITY_VERSION = "features-1"


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
    ):
        if row[flag]:
            penalty += weight
    tf, tfe = float(row["templateFlux"]), float(row["templateFluxErr"])
    if np.isfinite(tf) and np.isfinite(tfe) and tfe > 0 and tf > 20.0 * tfe:
        # a small change on a bright template source is most often a PSF-matching residual
        ratio = abs(float(row["psfFlux"])) / tf
        penalty += 2.0 * max(0.0, 1.0 - ratio / 0.05)
    if row["centroid_flag"] or row["psfFlux_flag"]:
        penalty += 1.0
    return float(np.exp(-penalty))
