"""Alert quality on the product's own skies; prints JSON.

Nights of the crowded ``mini`` field and the ``comcam`` default field (bright, saturated and
variable stars, transients and movers, as ``dmcs simulate night`` makes them) are processed by
the product's CCD chain, scored by the shipped reliability model, associated CCD by CCD as the
Association component does (``scripts/night_truth.py``), and compared with the truth
(``base/reports/alert_quality.py``): completeness per true S/N and magnitude bin before and after
the alert cut, purity of all and of the alerted DIASources, DIASource astrometry at S/N ≥ 20
beside the WCS fit, PSF-flux pulls per true-S/N bin, and false DIASources within 5″ of
stars brighter than 18 mag per star per visit. ``pooled`` holds each camera's figures over its
nights and ``meets`` says which of the issue's targets they reach. Seeds 301+ are used neither
by the tests nor by the training.

    PYTHONPATH=. python benchmarks/ccd_quality.py [--seeds 301 302] [--mini-visits 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algorithms.reliability import ReliabilityModel
from base.reliability import alert_threshold, load_reliability_model
from base.reports.alert_quality import (
    PULL_SNR_EDGES,
    CcdArea,
    alert_quality,
    bright_star_false,
    ccd_noise,
    flux_pulls,
    pull_table,
    scope_truth,
)
from base.reports.truth import load_bright_stars, match
from config.cameras import load_camera
from scripts.night_truth import (
    LabelledNight,
    associate_night,
    default_workers,
    nights,
)

TARGETS = {
    "purityAlerted": 0.95,
    "completenessSnrGe7Alerted": 0.90,
    "purityAllDiaSources": 0.50,
    "completenessSnrGe7": 0.97,
    "diaSourceRmsMas": 50.0,
    "falsePerBrightStarVisit": 0.2,
    "pullMedianAbs": 0.1,
    "pullSigma": (0.9, 1.1),
    "pullMinSources": 20,
}
BRIGHT_MAG = 18.0


def night_quality(
    n: LabelledNight, threshold: float, night_dir: Path, model: ReliabilityModel | None = None
) -> dict[str, Any]:
    """The figures of one night (``alert_quality``), the WCS fit and the bright-star count;
    ``_pulls`` holds the raw (S/N, pull) pairs for pooling."""
    model = model or load_reliability_model()
    camera = load_camera(n.camera)
    areas, wcs = {}, []
    for c in n.ccds:
        s = c.summary
        if c.ok and s.get("sky_level_electrons") is not None:
            rn2, tvar = ccd_noise(camera, c.detector, str(s.get("band", "")), s.get("zeropoint"))
            areas[(c.visit, c.detector)] = CcdArea(
                c.shape[1], c.shape[0], float(s["sky_level_electrons"]),
                float(s["psf_fwhm_pixels"]), rn2, tvar,
            )  # fmt: skip
        if c.ok and s.get("astrometric_scatter_mas") is not None:
            wcs.append(float(s["astrometric_scatter_mas"]))
    scoped, snr = scope_truth(n.truth, areas)
    dia = dict(n.dia)
    if dia:
        dia["reliability"] = model.score(dia)
        dia.update(associate_night(dia, threshold))
    else:
        dia = {k: np.zeros(0) for k in ("ra", "dec", "visit", "psfFlux", "psfFluxErr")}
    q = alert_quality(n.truth, scoped, snr, dia, threshold)
    q["astrometry"]["wcsFitRmsMasMedian"] = float(np.median(wcs)) if wcs else None
    stars = load_bright_stars(night_dir / "truth.sqlite", {v for v, _ in areas}, BRIGHT_MAG)
    alerted = (dia.get("diaObjectId", np.zeros(0)) != 0) & (
        dia.get("reliability", np.zeros(0)) >= threshold
    )
    q["brightStars"] = bright_star_false(stars, areas, dia, match(n.truth, dia)[1], 5.0, alerted)
    q["_pulls"] = flux_pulls(scoped, snr, dia, match(scoped, dia)[0])
    q["nCcds"], q["nCcdsFailed"] = len(n.ccds), sum(not c.ok for c in n.ccds)
    return q


def _pooled(per: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over nights: shares weighted by their counts."""

    def share(key: str, weight: str) -> float | None:
        w = sum(q[weight] for q in per if q[key] is not None)
        return sum(q[key] * q[weight] for q in per if q[key] is not None) / w if w else None

    stars = [q["brightStars"] for q in per]
    n_sv = sum(b["nStarVisits"] for b in stars)
    snr = np.concatenate([q["_pulls"][0] for q in per])
    pull = np.concatenate([q["_pulls"][1] for q in per])
    ast = [q["astrometry"] for q in per]
    return {
        "nDiaSources": sum(q["nDiaSources"] for q in per),
        "nAlerted": sum(q["nAlerted"] for q in per),
        "nTruthSnrGe7": sum(q["nTruthSnrGe7"] for q in per),
        "purityAllDiaSources": share("purityAllDiaSources", "nDiaSources"),
        "purityAlerted": share("purityAlerted", "nAlerted"),
        "completenessSnrGe7": share("completenessSnrGe7", "nTruthSnrGe7"),
        "completenessSnrGe7Alerted": share("completenessSnrGe7Alerted", "nTruthSnrGe7"),
        "nReliableWithoutObject": sum(q["nReliableWithoutObject"] for q in per),
        "diaSourceRmsMas": _pooled_rms([(a["diaSourceRmsMas"], a["n"]) for a in ast]),
        "nAstrometryFlagged": sum(a["nFlagged"] for a in ast),
        "diaSourceRmsMasWithFlagged": _pooled_rms(
            [(a["diaSourceRmsMasWithFlagged"], a["n"] + a["nFlagged"]) for a in ast]
        ),
        "nBrightStarVisits": n_sv,
        "falsePerBrightStarVisit": sum(b["nFalseNear"] for b in stars) / n_sv if n_sv else None,
        "falsePerBrightStarVisitUnflagged": sum(b["nFalseNearUnflagged"] for b in stars) / n_sv
        if n_sv
        else None,
        "nFalseNearBrightAlerted": sum(b.get("nFalseNearAlerted", 0) for b in stars),
        "pullsBySnr": pull_table(snr, pull, np.asarray(PULL_SNR_EDGES)),
    }


def _pooled_rms(parts: list[tuple[float | None, int]]) -> float | None:
    """The rms over the nights' matches from each night's (rms, count); None without any."""
    n = sum(k for r, k in parts if r is not None)
    return float(np.sqrt(sum(r**2 * k for r, k in parts if r is not None) / n)) if n else None


def meets(p: dict[str, Any]) -> dict[str, bool | None]:
    """Which of the issue's targets the pooled figures of a camera reach (None: not measured)."""

    def at_least(key: str) -> bool | None:
        return None if p[key] is None else bool(p[key] >= TARGETS[key])

    lo, hi = TARGETS["pullSigma"]
    binned = [b for b in p["pullsBySnr"] if b["n"] >= TARGETS["pullMinSources"]]
    fp, rms = p["falsePerBrightStarVisit"], p["diaSourceRmsMas"]
    return {
        "purityAlerted": at_least("purityAlerted"),
        "completenessSnrGe7Alerted": at_least("completenessSnrGe7Alerted"),
        "purityAllDiaSources": at_least("purityAllDiaSources"),
        "completenessSnrGe7": at_least("completenessSnrGe7"),
        "falsePerBrightStarVisit": None
        if fp is None
        else bool(fp <= TARGETS["falsePerBrightStarVisit"]),
        "diaSourceRmsMas": None if rms is None else bool(rms <= TARGETS["diaSourceRmsMas"]),
        "pullsEverySnrBin": None
        if not binned
        else all(
            abs(b["median"]) <= TARGETS["pullMedianAbs"] and lo <= b["robustSigma"] <= hi
            for b in binned
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[301, 302])
    ap.add_argument("--mini-visits", type=int, default=6)
    ap.add_argument("--comcam-visits", type=int, default=2)
    ap.add_argument("--cameras", nargs="+", default=["mini", "comcam"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/dmcs-ccd-quality"))
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--reuse", action="store_true", help="reuse processed CCDs of a past run")
    ap.add_argument("--model", type=Path, help="a reliability model file (default: shipped)")
    ap.add_argument("--threshold", type=float, help="alert threshold (default: the model's)")
    args = ap.parse_args()
    model = load_reliability_model(args.model)
    threshold = alert_threshold(model, args.threshold)
    visits = {"mini": args.mini_visits, "comcam": args.comcam_visits}
    specs = [(c, s, visits.get(c, 2)) for c in args.cameras for s in args.seeds]
    t0 = time.time()
    out: dict[str, Any] = {
        "benchmark": "ccd_quality",
        "model": model.version,
        "reliabilityThreshold": threshold,
        "nights": {},
    }
    per_camera: dict[str, list[dict[str, Any]]] = {}
    labelled = nights(specs, args.work, args.workers, args.reuse)
    for (camera, seed, v), n in zip(specs, labelled, strict=True):
        q = night_quality(n, threshold, args.work / f"{camera}-s{seed}-v{v}", model)
        out["nights"][f"{n.camera}-s{n.seed}"] = {k: x for k, x in q.items() if k != "_pulls"}
        per_camera.setdefault(n.camera, []).append(q)
    out["pooled"] = {c: _pooled(qs) for c, qs in per_camera.items()}
    out["meets"] = {c: meets(p) for c, p in out["pooled"].items()}
    out["targets"] = TARGETS
    out["wallSeconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
