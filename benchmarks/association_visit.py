"""Association per visit of the whole ``lsstcam-lite`` focal plane (189 CCDs), 1 vs N partitions.

Each partition is a separate process with its own APDB connections, running the prompt
Association's own step (``base.prompt.association_step.associate_ccd``, reliability model
and alert hand-off into the outbox included) over its CCDs in order, as an Association actor
does; with N > 1 the CCDs are routed by ``base.prompt.partitions.association_peer`` and each
holds its region lock. The CCDs of a partition are queued at once (a whole visit's results
arriving together) and stored as the actor stores what queues behind its lock: up to
``--batch`` CCDs per transaction (group commit, the actor's ``GROUP_COMMIT_MAX``; 1: one CCD
per transaction as before). A first visit founds the DiaObjects; the measured visit (dithered 20″)
matches them. The time is the wall time from the first CCD's start to the last CCD's commit.
Prints JSON. ``DMCS_BENCH_DSN`` uses a running PostgreSQL instead of a temporary one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from base.apdb import Apdb, Region
from base.apdb.simulate import dia_sources
from base.postgres import postgres_dsn
from base.prompt.association import GROUP_COMMIT_MAX
from base.prompt.association_step import alert_handoff, associate_ccds
from base.prompt.partitions import association_peer
from base.prompt.requests import CcdResults
from base.prompt.settings import AssociationSettings
from base.reliability import alert_threshold, load_reliability_model
from config.cameras import load_camera

RA0, DEC0, MJD = 150.0, -30.0, 60800.1


def visit_ccds(visit: int, n_src: int, dither_arcsec: float, seed: int) -> list[CcdResults]:
    """One visit's CCD results: ``n_src`` DIASources per CCD, the same stars every visit."""
    cam = load_camera("lsstcam-lite")
    scale = cam.pixel_scale_arcsec / 3600.0
    out = []
    for det in cam.detectors:
        mm = 1000.0 / cam.pixel_size_um
        dx, dy = det.fp_x_mm * mm * scale, det.fp_y_mm * mm * scale
        dec_c = DEC0 + dy
        cos = math.cos(math.radians(dec_c))
        ra_c = RA0 + dx / cos
        half = 0.5 * det.nx * scale
        box = Region.box(ra_c + dither_arcsec / 3600 / cos, dec_c, half)
        stars = np.random.default_rng([seed, det.id])
        ra = ra_c + stars.uniform(-half, half, n_src) / cos
        dec = dec_c + stars.uniform(-half, half, n_src)
        noise = np.random.default_rng([visit % 1000, det.id]).normal(0, 0.05 / 3600, (2, n_src))
        ra, dec = ra + noise[0] / cos, dec + noise[1]
        keep = box.contains(ra, dec)
        rng = np.random.default_rng([visit % 1000, det.id, 1])
        mjd = MJD + (visit % 1000) * 0.0005
        src = dia_sources(rng, ra[keep], dec[keep], visit, det.id, mjd)
        out.append(CcdResults(visit, det.id, "r", 20261121, mjd, box.ra, box.dec, src, []))
    return out


async def _partition(
    dsn: str, schema: str, ccds: list[CcdResults], exclusive: bool, batch: int
) -> dict:
    model = load_reliability_model()
    threshold = alert_threshold(model, None)
    apdb = await Apdb.connect(dsn, schema, max_size=4)
    handoff = functools.partial(alert_handoff, min_reliability=threshold)
    settings = AssociationSettings()
    try:
        start, cpu = time.time(), time.process_time()
        for k in range(0, len(ccds), batch):
            done = await associate_ccds(
                apdb, ccds[k : k + batch], settings, model, threshold, handoff=handoff,
                exclusive=exclusive,
            )  # fmt: skip
            failed = [d for d in done if isinstance(d, Exception)]
            if failed:
                raise failed[0]
        end = time.time()
        return {"start": start, "end": end, "ccds": len(ccds), "cpu": time.process_time() - cpu}
    finally:
        await apdb.close()


def _run_partition(args: tuple[str, str, list[CcdResults], bool, int]) -> dict:
    return asyncio.run(_partition(*args))


def _warm(_: int) -> int:
    return os.getpid()


def measure(
    dsn: str, schema: str, visits: list[list[CcdResults]], n: int, batch: int
) -> dict[str, Any]:
    """Wall seconds of each visit through ``n`` partition processes."""
    with mp.get_context("spawn").Pool(n) as pool:
        pool.map(_warm, range(n))
        seconds, cpu = [], []
        for ccds in visits:
            queues: list[list[CcdResults]] = [[] for _ in range(n)]
            for c in ccds:
                name = association_peer("A", n, c.to_wire())
                queues[0 if name == "A" else int(name[1:])].append(c)
            jobs = [(dsn, schema, q, n > 1, batch) for q in queues]
            done = pool.map(_run_partition, jobs)
            seconds.append(max(d["end"] for d in done) - min(d["start"] for d in done))
            cpu.append(sum(d["cpu"] for d in done))
    return {"seconds": seconds, "cpu": cpu, "ccds_per_partition": [len(q) for q in queues]}


async def _drop(dsn: str, schemas: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for s in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
        for s in schemas:
            await (await Apdb.connect(dsn, s, max_size=1)).close()
    finally:
        await conn.close()


def run(dsn: str, partitions: list[int], n_src: int, batch: int) -> dict[str, Any]:
    first = visit_ccds(2026112100001, n_src, 0.0, 1)
    second = visit_ccds(2026112100002, n_src, 20.0, 1)
    schemas = [f"bench_assoc_p{n}" for n in partitions]
    asyncio.run(_drop(dsn, schemas))
    results = {}
    for n, schema in zip(partitions, schemas, strict=True):
        founding = measure(dsn, schema, [first], n, batch)
        matching = measure(dsn, schema, [second], n, batch)
        results[str(n)] = {
            "founding_visit_s": round(founding["seconds"][0], 3),
            "matching_visit_s": round(matching["seconds"][0], 3),
            "matching_visit_association_cpu_s": round(matching["cpu"][0], 3),
            "ccds_per_partition": matching["ccds_per_partition"],
        }
    return {
        "benchmark": "association_visit",
        "camera": "lsstcam-lite",
        "ccds_per_visit": len(first),
        "dia_sources_per_visit": int(sum(len(c.sources["ra"]) for c in second)),
        "partitions": results,
        "target_s": 2.0,
        "group_commit_max": batch,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "note": "wall time per visit, first CCD start to last commit; one PostgreSQL;"
        " cpu: the partition processes' own (PostgreSQL's not counted)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sources-per-ccd", type=int, default=50)
    parser.add_argument(
        "--batch", type=int, default=GROUP_COMMIT_MAX,
        help="most CCDs stored in one transaction (1: one at a time, as before group commit)",
    )  # fmt: skip
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_dsn(os.environ.get("DMCS_BENCH_DSN"), Path(tmp) / "pg") as dsn,
    ):
        print(json.dumps(run(dsn, args.partitions, args.sources_per_ccd, args.batch), indent=2))


if __name__ == "__main__":
    main()
