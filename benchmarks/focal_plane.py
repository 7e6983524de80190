"""The whole focal plane at the real cadence: latency, throughput and the overhead per CCD.

An ``lsstcam-lite`` night (189 CCDs of 512×512 at their true focal-plane positions) is simulated,
then replayed through the whole running system on this machine (embedded Ray, embedded
PostgreSQL, the gateway), at ``--speed`` (1 = the real 37 s cadence). ``--full-size`` replays
``lsstcam`` instead (189 CCDs of 4k×4k), for a machine with many cores.

Meanwhile every process of the run is sampled (``psutil``, every ``SAMPLE_S``) and its CPU time
attributed by what it is: each component's Ray actor (by the actor table's pid), the CCD
processors' worker children, the event bus, PostgreSQL, Ray's own daemons, and this process
(the simulated camera, the night driver, the gateway and the replay's bookkeeping). The pixel
work itself is measured afterwards on a sample of the same night's CCDs, in this process, with
the same adapter the workers run (``run_ccd``'s own CPU timer). Overhead per CCD is every
core-second of the run that is not that pixel work, divided by the CCDs; it is printed with and
without this process's share (the simulated camera is not part of dmcs).

Figures: per-visit latency endReadout → last alert (p50/p95), CCDs per second sustained,
core-seconds per CCD by category, Association core-seconds per visit; targets: overhead
≤ 0.15 core-s per CCD, Association ≤ 2 s per visit. Without a many-core machine, ``--full-size``
is not run here; the JSON then carries the model's prediction for one 16-core node from the
per-CCD costs measured.

    python benchmarks/focal_plane.py [--visits 3] [--speed 1] [--processors 2] [--full-size]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import ray
import ray._private.state as ray_state
from rich.console import Console

from base.ccd_inputs import NightDirectoryRepository
from base.ccd_processing import CcdProcessing
from base.heap import keep_freed_memory
from commands.replay.main import prepare_night, run_replay
from commands.replay.options import ReplayOptions
from commands.replay.session import RUN_ENV
from summit.night_files import open_night

SAMPLE_S = 0.5
PIXEL_SAMPLE = 12
CADENCE_S = 37.0
TARGET_OVERHEAD_CORE_S = 0.15
TARGET_ASSOCIATION_S = 2.0
TARGET_VISIT_S = 60.0
FULL_SIZE_CORES = 16
OWN = "driver, camera and gateway (this process)"


class MarkingConsole(Console):
    """A console that notes when the replay says the system is up (the night starts then)."""

    up_at: float | None = None

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.up_at is None and objects and str(objects[0]).startswith("dmcs is up"):
            self.up_at = time.monotonic()
        super().print(*objects, **kwargs)


class CpuSampler:
    """Core-seconds of every process of the replay, attributed to categories as they run."""

    def __init__(self, out: Path) -> None:
        self._out = str(out.resolve())
        self._last: dict[int, float] = {}
        self.seconds: dict[str, float] = defaultdict(float)
        #: (monotonic time, category totals) after each sample.
        self.series: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._actors: dict[int, str] = {}
        self._actors_read = 0.0
        #: Whether each process seen, by (pid, start time), is one of the run's.
        self._ours: dict[tuple[int, float], bool] = {}
        self._servers: set[int] = set()
        #: CPU seconds of the sampling itself (its thread in this process): the instrument's,
        #: not the product's, so not in :attr:`seconds`.
        self.sampler_s = 0.0

    def __enter__(self) -> CpuSampler:
        own = psutil.Process().cpu_times()
        self._last[os.getpid()] = own.user + own.system
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def _actor_pids(self) -> dict[int, str]:
        if ray.is_initialized() and time.monotonic() - self._actors_read > 5.0:
            try:
                table = ray_state.actors().values()
            except Exception:  # noqa: BLE001 -- Ray starting or stopping: keep the last table
                return self._actors
            self._actors = {
                int(a["Pid"]): a["Name"].rpartition(":")[2] or a["ActorClassName"]
                for a in table
                if a["State"] == "ALIVE" and a.get("Pid")
            }
            self._actors_read = time.monotonic()
        return self._actors

    def _category(self, proc: psutil.Process, actors: dict[int, str]) -> str:
        if proc.pid == os.getpid():
            return OWN
        if proc.pid in actors:
            return _component_category(actors[proc.pid])
        if proc.ppid() in actors:
            name = actors[proc.ppid()]
            return "CCD worker (pixel work, inputs, hand-off)" if "Ccd" in name else name
        if proc.name().startswith("postgres"):
            return "PostgreSQL (registry, APDB, records)"
        return "Ray runtime (raylet, GCS, idle workers)"

    def _is_ours(self, proc: psutil.Process, run: str) -> bool:
        """A process of the run (its environment says so), the run's PostgreSQL server, or
        one of that server's backends (whose environment is overwritten); decided once."""
        key = (proc.pid, proc.create_time())
        if key not in self._ours:
            postgres = proc.name() == "postgres"
            server = postgres and self._out in " ".join(proc.cmdline())
            if server:
                self._servers.add(proc.pid)
            self._ours[key] = (
                server
                or proc.environ().get(RUN_ENV) == run
                or (postgres and proc.ppid() in self._servers)
            )
        return self._ours[key]

    def sample(self) -> None:
        began = time.thread_time()
        try:
            self._sample(began)
        finally:
            self.sampler_s += time.thread_time() - began

    def _sample(self, began: float) -> None:
        run = os.environ.get(RUN_ENV)
        if not run:
            return
        actors = self._actor_pids()
        procs = [psutil.Process()]
        # Oldest first, so that a backend is looked at after its server.
        for proc in sorted(psutil.process_iter(["pid", "create_time"]),
                           key=lambda p: p.info["create_time"] or 0.0):  # fmt: skip
            try:
                if proc.pid != os.getpid() and self._is_ours(proc, run):
                    procs.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for proc in procs:
            try:
                times = proc.cpu_times()
                kind = self._category(proc, actors)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            used = times.user + times.system
            if proc.pid == os.getpid():  # less the sampling so far, this sample's included
                used -= self.sampler_s + time.thread_time() - began
            # A process first seen is new to this run (its processes carry the run's id), so
            # all its CPU counts; this process's own counts from the start of the sampling.
            self.seconds[kind] += max(0.0, used - self._last.get(proc.pid, 0.0))
            self._last[proc.pid] = used
        self.series.append((time.monotonic(), dict(self.seconds)))

    def at(self, t: float) -> dict[str, float]:
        """Category totals at the last sample not after ``t``."""
        before = [totals for when, totals in self.series if when <= t]
        return before[-1] if before else {}

    def between(self, start: float, end: float) -> dict[str, float]:
        a, b = self.at(start), self.at(end)
        return {k: v - a.get(k, 0.0) for k, v in b.items()}


def _component_category(name: str) -> str:
    if name.startswith("CcdProcessor"):
        return "CCD processor actors (scheduling, events, hand-off)"
    if name in ("SummitBuffer", "HeaderService", "Ingest"):
        return f"data plane: {name}"
    if name.startswith("Association"):
        return "Association"
    if name == "AlertPublisher":
        return "AlertPublisher (alert encoding)"
    if "bus" in name.lower():
        return "event bus"
    return f"component: {name}"


def pixel_cpu_per_ccd(night: Path, sample: int, seed: int) -> dict[str, float]:
    """``run_ccd``'s CPU seconds per CCD on ``sample`` CCDs of the night, after a warm-up CCD,
    with freed heap kept as the CCD worker child keeps it (without, glibc maps and zeroes every
    4k×4k plane afresh: 50k–350k page faults and 0.9–1.9 system s more a comcam CCD)."""
    keep_freed_memory()
    source = open_night(night)
    adapter = CcdProcessing(NightDirectoryRepository(night))
    rnd = random.Random(seed)
    jobs = [(v, d.id) for v in source.visits for d in source.camera.detectors]
    picked = rnd.sample(jobs, min(len(jobs), sample + 1))
    cpu: list[float] = []
    for i, (v, det) in enumerate(picked):
        out = adapter.process(source.raw(v, det), adapter.preload(source.visit_info(v), det))
        if i and out.cpu_timings:
            cpu.append(out.cpu_timings["total"])
    return {
        "mean": round(statistics.fmean(cpu), 4) if cpu else float("nan"),
        "median": round(statistics.median(cpu), 4) if cpu else float("nan"),
        "n": len(cpu),
    }


def _prediction(per_ccd_core_s: float, pixel_full_s: float | None) -> dict[str, Any]:
    """Latency model for 189 full-size CCDs on one ``FULL_SIZE_CORES``-core node."""
    if pixel_full_s is None:
        return {"note": "no full-size pixel figure: run benchmarks/ccd.py for it"}
    core_s = 189 * (pixel_full_s + per_ccd_core_s)
    return {
        "cores": FULL_SIZE_CORES,
        "pixel_core_s_per_ccd": pixel_full_s,
        "overhead_core_s_per_ccd": round(per_ccd_core_s, 3),
        "visit_core_s": round(core_s, 1),
        "visit_wall_s_if_perfectly_shared": round(core_s / FULL_SIZE_CORES, 1),
        "keeps_cadence": core_s / FULL_SIZE_CORES <= CADENCE_S,
        "within_60s": core_s / FULL_SIZE_CORES <= TARGET_VISIT_S,
    }


def _per_ccd(seconds: dict[str, float], ccds: int) -> dict[str, float]:
    return {k: round(v / ccds, 4) for k, v in sorted(seconds.items(), key=lambda x: -x[1])}


def _costs(night_s: dict[str, float], ccds: int, visits: int, pixel_s: float) -> dict[str, Any]:
    """Core-seconds of the night per CCD: in all, pixel work, and the overhead besides it."""
    total = sum(night_s.values())
    own = night_s.get(OWN, 0.0)
    association = sum(v for k, v in night_s.items() if k.startswith("Association"))
    overhead = (total - pixel_s * ccds) / ccds
    return {
        "core_s_per_ccd": round(total / ccds, 4),
        "overhead_core_s_per_ccd": round(overhead, 4),
        "overhead_core_s_per_ccd_without_driver": round(overhead - own / ccds, 4),
        "core_s_per_ccd_by_category": _per_ccd(night_s, ccds),
        "association_core_s_per_visit": round(association / visits, 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    console = MarkingConsole(stderr=True)
    camera = "lsstcam" if args.full_size else args.camera
    out = args.out or Path(tempfile.mkdtemp(prefix="dmcs-focal-plane-"))
    options = ReplayOptions(
        out=out, camera=camera, visits=args.visits, seed=args.seed, speed=args.speed,
        processors=args.processors, night=args.night, drain_seconds=args.drain, progress=False,
        fresh=True,
    )  # fmt: skip
    night = await prepare_night(options, console)
    began = time.monotonic()
    with CpuSampler(out) as sampler:
        summary = await run_replay(options, console)
    wall = time.monotonic() - began
    ccds = max(1, int(summary["ccdsProcessed"]))
    visits = max(1, int(summary["visits"]))
    pixel = pixel_cpu_per_ccd(night, args.pixel_sample, args.seed)
    visit_lat = summary["latencySummary"].get("visit") or {}
    drive = summary.get("drive") or {}
    # The night: from "dmcs is up" to the last alert (the drive, then the slowest visit's wait).
    up = console.up_at or began
    night_end = up + float(drive.get("duration_s") or 0.0) + float(visit_lat.get("max") or 0.0)
    night_s = sampler.between(up, night_end + 2 * SAMPLE_S)
    costs = _costs(night_s, ccds, visits, pixel["mean"])
    return {
        "benchmark": "focal_plane",
        "camera": camera,
        "visits": summary["visits"],
        "ccds": summary["ccdsExpected"],
        "speed": args.speed,
        "cadence_s": CADENCE_S / args.speed,
        "processors": args.processors,
        "cores": os.cpu_count(),
        "complete": summary["complete"],
        "ccds_processed": summary["ccdsProcessed"],
        "ccds_failed": summary["ccdsFailed"],
        "alerts": summary["alerts"],
        "visit_latency_s": {k: visit_lat.get(k) for k in ("p50", "p95", "max")},
        "visit_share_within_60s": summary["visitShareWithin60s"],
        "night_s": round(night_end - up, 1),
        "ccds_per_s_sustained": round(ccds / max(night_end - up, 1e-9), 3),
        "replay_wall_s": round(wall, 1),
        "startup_core_s": round(sum(sampler.at(up).values()), 1),
        "run_core_s": round(sum(sampler.seconds.values()), 1),
        "night_core_s": round(sum(night_s.values()), 1),
        "sampler_core_s": round(sampler.sampler_s, 1),  # the measurement's own, not counted
        "pixel_core_s_per_ccd": pixel,
        **costs,
        "stage_median_s": {
            s["stage"]: s.get("medianSeconds") for s in summary["latencySummary"].get("steps", [])
        },
        "targets": {
            "overhead_core_s_per_ccd": TARGET_OVERHEAD_CORE_S,
            "association_s_per_visit": TARGET_ASSOCIATION_S,
            "visit_latency_s": TARGET_VISIT_S,
        },
        "meets_overhead": costs["overhead_core_s_per_ccd"] <= TARGET_OVERHEAD_CORE_S,
        "meets_association": costs["association_core_s_per_visit"] <= TARGET_ASSOCIATION_S,
        "full_size_model": None
        if args.full_size
        else _prediction(costs["overhead_core_s_per_ccd"], args.full_size_pixel_s),
        "drive": drive,
        "out": str(out),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camera", default="lsstcam-lite", help="another camera, to check the method")
    p.add_argument("--night", type=Path, default=None, help="an already simulated night")
    p.add_argument("--visits", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--speed", type=float, default=1.0, help="1 = the real 37 s cadence")
    p.add_argument("--processors", type=int, default=2)
    p.add_argument("--drain", type=float, default=900.0)
    p.add_argument("--full-size", action="store_true", help="189 CCDs of 4k×4k (lsstcam)")
    p.add_argument("--pixel-sample", type=int, default=PIXEL_SAMPLE)
    p.add_argument(
        "--full-size-pixel-s", type=float, default=None,
        help="run_ccd CPU seconds of one 4k×4k CCD (benchmarks/ccd.py) for the 16-core model",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="fresh directory (default: a temp one)")
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2, default=str))
