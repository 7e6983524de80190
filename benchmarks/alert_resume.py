"""Alert resume benchmark: the archive write per CCD batch (what the resume cursor added to the
publisher's path: the position drawn under an advisory lock, the (visit, detector) index) and
the archive replay a resuming subscriber is served from, full stream (packets only) and
filtered (plus the filter columns from the decoded packets). 24 batches of 250 alerts with
three 30-px cutouts each, an embedded PostgreSQL. Prints JSON; CPU figures are this process's
(PostgreSQL's own work is not counted)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from base.alerts import AlertArchive
from base.alerts.simulate import cutout_template, simulated_ccd
from base.alerts.spool import AlertSpool, AlertStreamRpc
from base.postgres import postgres_dsn

Batch = tuple[int, int, list[int], list[bytes]]


def make_batches(n_batches: int, per: int) -> list[Batch]:
    rng = np.random.default_rng(17)
    template = cutout_template()
    out = []
    for k in range(n_batches):
        visit, det = 5000 + k // 8, k % 8
        batch = simulated_ccd(rng, per, visit, det, template).batch
        out.append((visit, det, batch.ids.tolist(), [bytes(p) for p in batch.packets()]))
    return out


class _Publisher(AlertStreamRpc):
    def __init__(self, archive: AlertArchive) -> None:
        self.spool = AlertSpool()
        self.alert_archive = archive


async def run(dsn: str, root: Path, batches: list[Batch]) -> dict[str, float]:
    archive = await AlertArchive.open(dsn, root, schema=f"bench_{uuid.uuid4().hex[:8]}")
    wall, cpu = [], []
    for visit, det, ids, packets in batches:
        t, c = time.perf_counter(), time.process_time()
        await archive.archive(20261207, visit, det, ids, packets)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    out = {
        "batches": len(batches),
        "mb_per_batch": round(sum(len(p) for p in batches[0][3]) / 1e6, 2),
        "archive_wall_ms_median": round(1e3 * float(np.median(wall)), 1),
        "archive_cpu_ms_median": round(1e3 * float(np.median(cpu)), 1),
    }
    publisher = _Publisher(archive)
    for name, table in (("full", False), ("filtered", True)):
        t, c = time.perf_counter(), time.process_time()
        n = after = 0
        while batch_list := (await publisher.rpc_replay_alerts(after, 16, 32 << 20, table))[
            "batches"
        ]:
            n += sum(len(b["ids"]) for b in batch_list)
            after = batch_list[-1]["position"]
        out[f"replay_{name}_alerts_per_s"] = round(n / (time.perf_counter() - t))
        out[f"replay_{name}_cpu_ms_per_alert"] = round(1e3 * (time.process_time() - c) / n, 3)
    await archive.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--per-batch", type=int, default=250)
    args = parser.parse_args()
    batches = make_batches(args.batches, args.per_batch)
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_dsn(None, Path(tmp) / "pg") as dsn,
    ):
        print(json.dumps(asyncio.run(run(dsn, Path(tmp) / "archive", batches))))


if __name__ == "__main__":
    main()
