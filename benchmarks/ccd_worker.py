"""The CCD processor's worker child, CCD after CCD: its core-seconds per CCD beside run_ccd's.

The CCDs of a simulated night (``--night``, e.g. ``dmcs simulate night --camera comcam --raws``)
go through the processor's own child process (``base.isolated.IsolatedWorker`` running
``base.prompt.ccd_work``) as the processor hands them over: the inputs resolved with their
checksums, ``preload`` on ``nextVisit``, ``process`` on the raw, every visit's CCDs in turn in
the same child. The child's CPU (user + system, from ``/proc``) per CCD is the worker's whole
cost; ``run_ccd``'s own CPU timer (from the result) is the pixel work; the difference is the
worker's overhead: reading and decoding the inputs, reading the raw, cutouts, the hand-off.
The first visit (the warm-up and the inputs' first decoding) is reported apart from the later
ones, which are the night's steady state. ``--no-cache`` runs without the pool's decoded-input
cache (each preload reads and decodes its files, as before it existed).

    python benchmarks/ccd_worker.py --night DIR [--detectors 0,1,2] [--no-cache]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import psutil

from base.ccd_inputs import NightDirectoryRepository, ResolvedInputs
from base.isolated import IsolatedWorker
from base.prompt.ccd_work import CPU_SPLIT
from summit.night_files import open_night

WORK = "base.prompt.ccd_work"


def _sha(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cpu(pid: int | None) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def main(args: argparse.Namespace) -> dict[str, Any]:
    source, repo = open_night(args.night), NightDirectoryRepository(args.night)
    detectors = [int(d) for d in args.detectors.split(",")] if args.detectors else [
        d.id for d in source.camera.detectors
    ]  # fmt: skip
    sums: dict[Path, str] = {}
    worker = IsolatedWorker("bench")
    cache_dir = None if args.no_cache else tempfile.mkdtemp(prefix="dmcs-input-cache-")
    extra = {} if cache_dir is None else {"cache": (cache_dir, 8 * 2**30)}
    rows: list[dict[str, Any]] = []
    try:
        await worker.run(f"{WORK}:warm_up", timeout=900)
        for i, v in enumerate(source.visits[: args.visits]):
            info = source.visit_info(v)
            for det in detectors:
                calibs = repo.get_calibs(det, v.band, v.mjd_start)
                template = repo.get_template(v.field_id, v.band, det)
                refcat = repo.get_refcat()
                paths = [p for p in (*dataclasses.astuple(calibs), template, refcat) if p]
                for p in paths:
                    sums.setdefault(p, _sha(p))
                inputs = ResolvedInputs(
                    visit=v.visit_id, detector=det, calibs=calibs, template=template,
                    refcat=refcat, checksums=tuple((str(p), sums[p]) for p in paths),
                )  # fmt: skip
                raw = str(source.raw(v, det))
                c0 = _cpu(worker.pid)
                await worker.run(f"{WORK}:preload", inputs, info, det, timeout=600, **extra)
                c1 = _cpu(worker.pid)
                res = await worker.run(
                    f"{WORK}:process", inputs, info, det, raw, timeout=600, **extra
                )
                c2 = _cpu(worker.pid)
                summary = res.get("summary", {})
                pixel = float(summary.get("pixel_cpu_s") or 0.0)
                rows.append({"visit": i, "detector": det, "preload": c1 - c0,
                             "process": c2 - c1, "ok": bool(res["ok"]),
                             "diaSources": len(res["ccd"]["sources"]["ra"]) if res["ok"] else 0,
                             "pixel": pixel,
                             **{k: summary.get(k) or 0 for k in CPU_SPLIT}})  # fmt: skip
                print(json.dumps({k: round(x, 3) if isinstance(x, float) else x
                                  for k, x in rows[-1].items()}), flush=True)  # fmt: skip
    finally:
        worker.close()
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)

    def figures(sel: list[dict[str, Any]]) -> dict[str, Any]:
        if not sel:
            return {}
        total = [r["preload"] + r["process"] for r in sel]
        pixel = [r["pixel"] for r in sel]
        return {
            "ccds": len(sel),
            "worker_core_s_per_ccd": round(statistics.fmean(total), 3),
            "preload_core_s_per_ccd": round(statistics.fmean(r["preload"] for r in sel), 3),
            "process_core_s_per_ccd": round(statistics.fmean(r["process"] for r in sel), 3),
            "pixel_core_s_per_ccd": round(statistics.fmean(pixel), 3),
            "overhead_core_s_per_ccd": round(statistics.fmean(total) - statistics.fmean(pixel), 3),
            "diaSources_per_ccd": round(statistics.fmean(r["diaSources"] for r in sel), 1),
            "worker_split_per_ccd": {
                k: round(statistics.fmean(r[k] for r in sel), 4) for k in CPU_SPLIT
            },
        }

    return {
        "benchmark": "ccd_worker",
        "camera": source.camera.name,
        "input_cache": cache_dir is not None,
        "first_visit": figures([r for r in rows if r["visit"] == 0]),
        "later_visits": figures([r for r in rows if r["visit"] > 0]),
        "all_ok": all(r["ok"] for r in rows),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--night", type=Path, required=True, help="a simulated night with raws")
    p.add_argument("--visits", type=int, default=3)
    p.add_argument("--detectors", default="", help="comma-separated (default: every one)")
    p.add_argument("--no-cache", action="store_true", help="without the decoded-input cache")
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2))
