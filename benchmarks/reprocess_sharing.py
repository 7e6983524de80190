"""Prompt latency of a live replay with and without batch reprocessing beside it.

A night system (2 CCD processors) runs on an embedded Ray that lends ``batch_slots = 1``
core to batch work. Disjoint parts of one ``mini`` night are replayed through it
(``replay_load.ReplayLoad``): a warm-up, then rounds of an unloaded replay and replays with
``dmcs reprocess --address <that Ray> --workers 1`` running meanwhile in its own process, at
niceness 19 (the default) and at 0 (no priority: the contrast). The batch reprocesses the
whole night (its raws registered in a registry schema of its own) and publishes its progress
to the system's gateway; each replay starts once the batch has finished a CCD (steady state),
and a batch that ends early is started again as a new release.
A fourth kind, ``nice19pg``, is an experiment on the residual: the batch at niceness 19
with its PostgreSQL backends reniced to 19 as well (found by their ``application_name``;
possible here because the embedded server runs as this user). dmcs does not do that itself.
Figures: alert latency (end of readout -> alerts published) p95 loaded / unloaded, the
per-step medians of each kind (where the time goes), and the batch's own rate meanwhile (from
its telemetry). A batch still running when its replay ends is interrupted (SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from actors.runtime import ray_address
from base.prompt_records import PromptRecords
from base.registry import Repository
from base.reprocess.register import register_night_raws
from commands.client import Client
from commands.server import RunningSystem, serve

DMCS = str(Path(sys.executable).parent / "dmcs")
BATCH_REGISTRY = "batch_source"
BATCH_APP = "dmcs-batch-load"


class BatchLoad:
    """``dmcs reprocess`` in its own process (started again if it ends) until stopped, when it
    is interrupted (SIGINT: the release is left ``interrupted``, resumable). Its progress
    comes from its own telemetry through the gateway."""

    def __init__(
        self, load: Any, running: RunningSystem, niceness: int, first_id: int, renice_pg: bool
    ) -> None:
        self.load, self.running, self.niceness = load, running, niceness
        self.renice_pg = renice_pg
        self.next_id = first_id
        self.progress: list[tuple[float, str, int]] = []  # (time, release, CCDs done)
        self.steady = asyncio.Event()
        self.reniced: set[int] = set()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with Client(self.running.ws_url) as watcher, asyncio.TaskGroup() as tg:
            watch = tg.create_task(self._watch(watcher))
            renice = tg.create_task(self._renice_pg()) if self.renice_pg else None
            try:
                while not self._stop.is_set():
                    await self._one()
            finally:
                watch.cancel()
                if renice is not None:
                    renice.cancel()

    async def _watch(self, watcher: Client) -> None:
        async for event in watcher.subscribe(["Reprocess"], ["reprocessProgress"], snapshot=False):
            if event.data["phase"] == "ccd":
                self.progress.append((time.perf_counter(), event.data["run"], event.data["done"]))
                if event.data["done"] >= 1:
                    self.steady.set()

    async def _renice_pg(self) -> None:
        """The experiment: the batch's PostgreSQL backends at the batch's niceness too."""
        conn = await asyncpg.connect(self.load.dsn)
        try:
            while True:
                pids = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1", BATCH_APP
                )
                for row in pids:
                    if row["pid"] not in self.reniced:
                        with contextlib.suppress(OSError):
                            os.setpriority(os.PRIO_PROCESS, row["pid"], self.niceness)
                            self.reniced.add(row["pid"])
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    async def _one(self) -> None:
        rid = self.next_id
        self.next_id += 1
        load = self.load
        sep = "&" if "?" in load.dsn else "?"
        args = [
            *("reprocess", "--dsn", f"{load.dsn}{sep}application_name={BATCH_APP}"),
            *("--registry-schema", BATCH_REGISTRY),
            *("--night", str(load.day_obs), "--night-dir", str(load.night)),
            *("--release", f"load{rid}", "--release-id", str(rid), "--workers", "1"),
            *("--address", ray_address(), "--niceness", str(self.niceness), "--json"),
            *("--url", self.running.ws_url, "--token", load.batch_token),
        ]
        proc = await asyncio.create_subprocess_exec(
            DMCS, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        ended = asyncio.create_task(proc.wait())
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([ended, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(ended, 30)
                except TimeoutError:
                    proc.kill()
                    await ended
        if not self._stop.is_set() and proc.returncode != 0:
            raise RuntimeError(f"batch load failed with exit status {proc.returncode}")

    def stop(self) -> None:
        self._stop.set()

    def rate_between(self, t0: float, t1: float) -> float | None:
        """Batch CCDs per second from ``t0`` to ``t1`` (from its progress telemetry)."""
        done = 0
        for release in {r for _, r, _ in self.progress}:
            seen = [(t, d) for t, r, d in self.progress if r == release]
            before = [d for t, d in seen if t <= t0] or [0]
            upto = [d for t, d in seen if t <= t1] or [0]
            done += max(upto) - max(before)
        return round(done / (t1 - t0), 3) if t1 > t0 else None


async def replay(load: Any, running: RunningSystem, batch: BatchLoad | None) -> dict[str, Any]:
    if batch is None:
        return await load.run(running, 0)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(batch.run())
        async with asyncio.timeout(180):
            await batch.steady.wait()
        t0 = time.perf_counter()
        try:
            result = await load.run(running, 0)
        finally:
            batch.stop()
        t1 = time.perf_counter()
    return {
        **result,
        "batchCcdsPerSecond": batch.rate_between(t0, t1),
        "pgBackendsReniced": len(batch.reniced),
    }


def p95(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 95)), 3) if values else None


async def step_medians(dsn: str, visits: list[int]) -> dict[str, float | None]:
    """Median seconds of each prompt step (``after`` -> ``stage``) over ``visits``."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        records = await PromptRecords.connect(pool)
        summary = await records.latency_summary(visits=visits)
    finally:
        await pool.close()
    return {s.stage: None if s.median_s is None else round(s.median_s, 3) for s in summary.steps}


async def sharing(out: Path, visits: int, rounds: int) -> dict[str, Any]:
    from replay_load import ReplayLoad  # beside this script

    kinds = ["unloaded", "nice19", "nice0", "nice19pg"]
    plan = ["warm", *kinds * rounds]
    load = ReplayLoad(out, runs=len(plan), visits=visits)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with load.system("benchshare") as night_config:
        config = night_config.model_copy(update={"batch_slots": 1})
        await load.register()
        repo = await Repository.connect(load.dsn, BATCH_REGISTRY)
        try:
            await register_night_raws(repo, load.night)
        finally:
            await repo.close()
        async with serve(config, port=0) as running:
            next_id = 1
            for kind in plan:
                batch = None
                if kind.startswith("nice"):
                    niceness = int(kind[4:].removesuffix("pg"))
                    batch = BatchLoad(load, running, niceness, next_id, kind.endswith("pg"))
                result = await replay(load, running, batch)
                if batch is not None:
                    next_id = batch.next_id
                if kind != "warm":
                    runs[kind].append(result)
        steps = {
            kind: await step_medians(load.dsn, [v for r in v_runs for v in r["visits"]])
            for kind, v_runs in runs.items()
        }
    lat = {k: [x for r in v for x in r["latencies"]] for k, v in runs.items()}
    unloaded = p95(lat["unloaded"])

    def ratio(kind: str) -> float | None:
        value = p95(lat[kind])
        return round(value / unloaded, 3) if value and unloaded else None

    def batch_rate(kind: str) -> float | None:
        rates = [r["batchCcdsPerSecond"] for r in runs[kind] if r["batchCcdsPerSecond"]]
        return round(float(np.mean(rates)), 3) if rates else None

    for v in runs.values():
        for r in v:
            r.pop("latencies")
    return {
        "workload": f"replay of {visits} mini visits at speed {load.speed:g}, x{rounds} each",
        "cpuCount": os.cpu_count(),
        "ccds": {k: len(v) for k, v in lat.items()},
        "complete": all(r["complete"] for v in runs.values() for r in v),
        "p95Seconds": {k: p95(v) for k, v in lat.items()},
        "p50Seconds": {k: round(float(np.median(v)), 3) if v else None for k, v in lat.items()},
        "p95Ratio": {
            "niceness19": ratio("nice19"),
            "niceness0": ratio("nice0"),
            "niceness19WithPostgresBackends": ratio("nice19pg"),
        },
        "stepMedianSeconds": steps,
        "batchCcdsPerSecondDuringReplay": {
            "niceness19": batch_rate("nice19"),
            "niceness0": batch_rate("nice0"),
            "niceness19WithPostgresBackends": batch_rate("nice19pg"),
        },
        "target": {"p95Ratio": 1.1},
        "met": (ratio("nice19") or 99.0) <= 1.1,
        "runs": runs,
    }


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=6, help="Visits per replay.")
    parser.add_argument("--rounds", type=int, default=2, help="Replays of each kind.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dmcs-bench-sharing-") as tmp:
        figures = asyncio.run(sharing(Path(tmp), args.visits, args.rounds))
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(figures, indent=2))
