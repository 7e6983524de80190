"""Truth metrics of one synthetic 4k×4k CCD (``algorithms.synthetic``) processed by ``run_ccd``.

Used by ``benchmarks/differencing.py`` to compare subtraction algorithms on an injected sky
(transients only: every other DIASource is an artefact). The product's alert quality on its own
skies is ``benchmarks/ccd_quality.py``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from algorithms.astrometry import separation_mas
from algorithms.pipeline import CcdResult
from algorithms.synthetic import SimVisit


def metrics(v: SimVisit, r: CcdResult, reliability_cut: float = 0.5) -> dict[str, object]:
    """Truth metrics of one processed synthetic CCD."""
    d, tt = r.diasources, v.truth_transients
    dist, j = cKDTree(np.stack([d["x"], d["y"]], 1)).query(np.stack([tt["x"], tt["y"]], 1))
    m = dist < 2.0
    strong = tt["snr"] >= 7
    spurious = np.ones(len(d), bool)
    spurious[j[m]] = False
    real = d[j[m]]
    clean = ~(
        real["pixelFlags_interpolatedCenter"]
        | real["pixelFlags_saturatedCenter"]
        | real["pixelFlags_crCenter"]
    )
    pulls = ((real["psfFlux"] - tt["flux"][m]) / real["psfFluxErr"])[clean]
    ts = v.truth_stars
    on = (ts["x"] > 0) & (ts["x"] < v.config.nx - 1) & (ts["y"] > 0) & (ts["y"] < v.config.ny - 1)
    ra, dec = r.wcs.pixel_to_sky(ts["x"][on], ts["y"][on]) if r.wcs else (np.nan, np.nan)
    wcs_err = separation_mas(ts["ra"][on], ts["dec"][on], ra, dec)
    return {
        "ok": r.ok,
        "flags": r.flags,
        "n_injected": len(tt["x"]),
        "completeness_snr_ge_7": round(float(m[strong].mean()), 4),
        "n_snr_ge_7": int(strong.sum()),
        "n_diasources": len(d),
        "spurious_before_cut": int(spurious.sum()),
        "spurious_after_cut": int((spurious & (d["reliability"] > reliability_cut)).sum()),
        "real_kept_by_cut": round(float(np.mean(real["reliability"] > reliability_cut)), 4),
        "astrometry_fit_rms_mas": round(r.astrometry.rms_mas, 2) if r.astrometry else None,
        "wcs_vs_truth_rms_mas": round(float(np.sqrt(np.mean(wcs_err**2))), 2),
        "psf_flux_pull_median": round(float(np.median(pulls)), 3),
        "psf_flux_pull_std": round(float(np.std(pulls)), 3),
        "n_pulls": len(pulls),
        "calibration_ratio": round(r.photocalib.calibration / v.calibration, 4)
        if r.photocalib
        else None,
    }
