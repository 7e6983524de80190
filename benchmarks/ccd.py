"""Benchmark: one synthetic 4k×4k LSSTCam-like CCD, raw amplifiers → DIASources, on one core.

Prints JSON: seconds per stage and in total, Mpix/s and peak resident memory of the
processing process. The CCD is processed ``REPEATS`` times and the run with the least CPU
time is reported: CPU (process) seconds are the figure of merit, since wall-clock time on
a shared machine measures the other tenants as much as the code; both are printed. The
input (16 amplifiers with overscan, calibrations, template, reference catalogue) is
simulated first and handed to a fresh process through a pickle, so
the simulation's memory is not counted; numba kernels are compiled (or loaded from cache)
on a small CCD before the timed run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from algorithms.pipeline import (
    CcdResult,
)
from algorithms.synthetic import SimConfig, SimVisit, make_visit
from algorithms.synthetic_run import run_visit
from base.heap import keep_freed_memory

REPEATS = 3


def lsstcam_config(seed: int = 1) -> SimConfig:
    """4096² pixels, 2 × 8 amplifiers, ~LSST star density at mid latitude, 30 s r-band."""
    return SimConfig(
        nx=4096, ny=4096, amps_x=8, amps_y=2, star_density=6e-4, n_transients=300,
        n_cosmic_rays=400, n_bad_columns=6, n_hot_pixels=300, psf_gradient=0.03, seed=seed,
    )  # fmt: skip


def process(v: SimVisit) -> CcdResult:
    return run_visit(v)


def _child(path: str) -> None:
    keep_freed_memory()  # as the CCD processor's worker child does (base/isolated.py)
    t0 = time.perf_counter()
    process(make_visit(SimConfig(seed=99, n_transients=5)))
    warm = time.perf_counter() - t0
    with open(path, "rb") as fh:
        v: SimVisit = pickle.load(fh)
    cpu_runs: list[float] = []
    res: CcdResult | None = None
    best: tuple[dict[str, float], dict[str, float]] | None = None
    for _ in range(REPEATS):
        res = None  # only one CCD's products alive at a time: the peak is one run's
        res = process(v)
        cpu_runs.append(res.cpu_timings["total"])
        if best is None or cpu_runs[-1] <= min(cpu_runs):
            best = (dict(res.cpu_timings), dict(res.timings))
    assert res is not None and best is not None
    cpu_t, wall_t = best
    npix = v.config.nx * v.config.ny
    total = wall_t["total"]
    cpu = cpu_t["total"]
    out = {
        "benchmark": "ccd",
        "detector_pixels": npix,
        "amplifiers": len(v.geometry.amps),
        "repeats": REPEATS,
        "stages_cpu_s": {k: round(x, 3) for k, x in cpu_t.items() if k != "total"},
        "total_cpu_s": round(cpu, 3),
        "stages_s": {k: round(x, 3) for k, x in wall_t.items() if k != "total"},
        "total_s": round(total, 3),
        "total_cpu_s_all_runs": [round(x, 3) for x in cpu_runs],
        "mpix_per_s": round(npix / 1e6 / cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "warmup_s": round(warm, 2),
        "ok": res.ok,
        "flags": res.flags,
        "n_diasources": len(res.diasources),
        "n_cutouts": len(res.cutouts),
        "summary": {
            k: (round(x, 4) if isinstance(x, float) else x) for k, x in res.summary.items()
        },
        "targets": {"total_cpu_s": 6.0, "peak_rss_mb": 2048},
        "peer": {
            "name": "Rubin ap_pipe (2022), s per detector",
            "value": 250.0,
            "ratio": round(250.0 / cpu, 1),
        },
    }
    print(json.dumps(out, indent=2))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        _child(sys.argv[2])
        return
    t0 = time.perf_counter()
    v = make_visit(lsstcam_config())
    sim_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "visit.pkl")
        with open(path, "wb") as fh:
            pickle.dump(v, fh, protocol=pickle.HIGHEST_PROTOCOL)
        del v
        print(f"# simulated input in {sim_s:.1f} s", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--run", path], check=True)


if __name__ == "__main__":
    main()
