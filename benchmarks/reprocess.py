"""Batch reprocessing benchmark: CCDs per second on Ray with 1 and 2 workers, scaling efficiency.

A ``mini`` night (``--visits`` visits x 4 CCDs, seed 7) is simulated, its raws registered in
an embedded PostgreSQL (or DMCS_BENCH_DSN), and reprocessed as separate releases with
``--workers`` 1, then 2 (up to ``--max-workers``). A warm-up release first starts the Ray
workers and loads the numba caches, so the figures are steady state. The rate is the CCD
phase (the parallel part): CCDs / seconds from the call to the last CCD done; the whole run
(with association, sequential by sky region) is reported beside it.

Target (ARCHITECTURE.md): scaling efficiency >= 90 % per added core, where efficiency(n) =
rate(n) / (n * rate(1)). Peer: none (the same code with one worker is the reference).

Prompt latency beside batch load (target: p95 within 10 % of unloaded): a full concurrent
replay through the running system, with and without ``dmcs reprocess`` beside it on the same
Ray (``reprocess_sharing.py``). ``--skip-sharing`` leaves it out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from base.postgres import postgres_dsn
from base.registry import Repository
from base.reprocess.observer import RunObserver
from base.reprocess.register import register_night_raws
from base.reprocess.runner import ReprocessConfig, reprocess


def simulate(out: Path, visits: int) -> Path:
    from summit.simulation import plan_night, run_night

    night = out / "night"
    run_night(plan_night("mini", visits, 7, night), raws=True)
    return night


async def one_run(dsn: str, night: Path, name: str, rid: int, workers: int) -> dict[str, Any]:
    from actors.reprocess import RayExecutor

    marks: dict[str, float] = {}

    class PhaseEnds(RunObserver):
        def progress(self, phase: str, done: int, total: int) -> None:
            if done == total:
                marks[phase] = time.perf_counter()

    config = ReprocessConfig(
        dsn=dsn, night_dir=night, release=name, release_id=rid, first_night=20250505
    )
    t0, c0 = time.perf_counter(), time.process_time()
    summary = await reprocess(config, RayExecutor(workers), PhaseEnds())
    wall = time.perf_counter() - t0
    ccd_s = marks.get("ccd", t0 + wall) - t0
    return {
        "workers": workers,
        "ccds": summary.processed,
        "ccdPhaseSeconds": round(ccd_s, 3),
        "ccdsPerSecond": round(summary.processed / ccd_s, 3),
        "wholeRunSeconds": round(wall, 3),
        "driverCpuSeconds": round(time.process_time() - c0, 3),
        "diaSources": summary.dia_sources,
        "failed": len(summary.failed),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    visits, max_workers = args.visits, args.max_workers
    from actors.reprocess import start_ray
    from actors.runtime import shutdown_ray

    with tempfile.TemporaryDirectory(prefix="dmcs-bench-reprocess-") as tmp:
        night = await asyncio.to_thread(simulate, Path(tmp), visits)
        with postgres_dsn(os.environ.get("DMCS_BENCH_DSN"), Path(tmp) / "pg") as dsn:
            repo = await Repository.connect(dsn)
            await register_night_raws(repo, night)
            await repo.close()
            start_ray(None, max_workers)
            try:
                await one_run(dsn, night, "bench_warm", 31, max_workers)
                runs = [
                    await one_run(dsn, night, f"bench_w{n}", n, n)
                    for n in range(1, max_workers + 1)
                ]
            finally:
                shutdown_ray()
        sharing = None
        if not args.skip_sharing:
            from reprocess_sharing import sharing as measure_sharing  # beside this script

            sharing = await measure_sharing(Path(tmp) / "sharing", args.replay_visits, args.rounds)
    base = runs[0]["ccdsPerSecond"]
    for r in runs:
        r["scalingEfficiency"] = round(r["ccdsPerSecond"] / (r["workers"] * base), 3)
    last = runs[-1]
    return {
        "benchmark": "reprocess",
        "camera": "mini",
        "visits": visits,
        "cpuCount": os.cpu_count(),
        "runs": runs,
        "target": {"scalingEfficiency": 0.9},
        "met": last["scalingEfficiency"] >= 0.9,
        "promptLatencyUnderLoad": sharing,
        "note": "wall-clock figures; on a shared machine they are disturbed by other load",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=6)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--replay-visits", type=int, default=6, help="Visits per replay.")
    parser.add_argument("--rounds", type=int, default=2, help="Replays of each kind.")
    parser.add_argument("--skip-sharing", action="store_true")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
