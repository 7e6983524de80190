"""Truth metrics for one synthetic 4k×4k CCD processed by ``run_ccd``; prints JSON.

Completeness for injected transients with true difference-image S/N ≥ 7, spurious
DIASources after the reliability cut (everything not matching an injected transient is an
artefact: the simulation has no variables or asteroids), astrometric residuals against the
true WCS and PSF-flux pulls for unflagged transients.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ccd import lsstcam_config, process

from algorithms.astrometry import separation_mas
from algorithms.pipeline import CcdResult
from algorithms.synthetic import SimVisit, make_visit

TARGETS = {
    "completeness_snr_ge_7": 0.95,
    "spurious_after_cut": 10,
    "astrometry_rms_mas": 50,
    "psf_flux_pull_std": [0.8, 1.2],
}


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


def main(seeds: tuple[int, ...] = (1, 2), reliability_cut: float = 0.5) -> None:
    """Seed 1 is the CCD the pipeline was developed on; seed 2 is a second, independent one."""
    out: dict[str, object] = {"benchmark": "ccd_quality"}
    for seed in seeds:
        v = make_visit(lsstcam_config(seed))
        out[f"seed_{seed}"] = metrics(v, process(v), reliability_cut)
    out["targets"] = TARGETS
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (1, 2))
