"""ZOGY versus Alard–Lupton on the same synthetic 4k×4k CCDs; prints JSON.

For each seed the CCD is simulated once and processed by ``run_ccd`` with each subtraction
algorithm (everything else identical): CPU seconds of the subtraction stage and of the
whole CCD (best of ``REPEATS``), and the truth metrics of ``synthetic_metrics`` (completeness at
true S/N ≥ 7, spurious DIASources before/after the reliability cut, PSF-flux pulls).
Seed 1 is the development CCD; seed 2 is independent.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ccd import lsstcam_config
from synthetic_metrics import metrics

from algorithms.pipeline import (
    CcdResult,
    PipelineConfig,
)
from algorithms.synthetic import SimConfig, SimVisit, make_visit
from algorithms.synthetic_run import run_visit

REPEATS = 2
ALGORITHMS = ("zogy", "alard_lupton")


def _run(v: SimVisit, algorithm: str) -> CcdResult:
    return run_visit(v, PipelineConfig(subtraction=algorithm))


def main(seeds: tuple[int, ...] = (1, 2)) -> None:
    for alg in ALGORITHMS:
        _run(make_visit(SimConfig(seed=99, n_transients=5)), alg)
    out: dict[str, object] = {"benchmark": "differencing", "repeats": REPEATS}
    for seed in seeds:
        v = make_visit(lsstcam_config(seed))
        per: dict[str, object] = {}
        for alg in ALGORITHMS:
            runs = [_run(v, alg) for _ in range(REPEATS)]
            best = min(runs, key=lambda r: r.cpu_timings["total"])
            m = metrics(v, best)
            per[alg] = {
                "subtraction_cpu_s": round(min(r.cpu_timings["subtraction"] for r in runs), 3),
                "total_cpu_s": round(best.cpu_timings["total"], 3),
                "n_diasources": m["n_diasources"],
                "spurious_before_cut": m["spurious_before_cut"],
                "spurious_after_cut": m["spurious_after_cut"],
                "completeness_snr_ge_7": m["completeness_snr_ge_7"],
                "real_kept_by_cut": m["real_kept_by_cut"],
                "psf_flux_pull_median": m["psf_flux_pull_median"],
                "psf_flux_pull_std": m["psf_flux_pull_std"],
                "diff_variance_scale": round(float(best.summary["diff_variance_scale"]), 3),
                "dia_significance_scale": round(float(best.summary["dia_significance_scale"]), 3),
                "flags": best.flags,
            }
        z, a = per["zogy"], per["alard_lupton"]
        per["ratio_subtraction_cpu_al_over_zogy"] = round(
            a["subtraction_cpu_s"] / z["subtraction_cpu_s"],
            2,  # type: ignore[index,operator]
        )
        out[f"seed_{seed}"] = per
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (1, 2))
