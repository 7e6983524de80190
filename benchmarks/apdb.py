"""APDB benchmark: per-visit preload + association + store of 10k DIASources with >= 1M
DiaObjects pre-filled, on an embedded PostgreSQL (or DMCS_BENCH_DSN). Prints JSON.

lsst-dax-apdb installs from PyPI (30.2026.4100) but its side-by-side run is not written yet;
the JSON says so rather than printing a ratio.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from algorithms.association_run import associate
from base.apdb import Apdb, IdPacker, Region
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from base.postgres import postgres_dsn

N_PREFILL, BATCH, N_SRC, MJD = 1_000_000, 20_000, 10_000, 60900.0
RA0, DEC0, FIELD_HALF = 150.0, 0.0, 5.0  # prefill 10 x 10 deg; a visit is 3.1 x 3.1 deg


async def run(dsn: str) -> dict:
    apdb = await Apdb.connect(dsn, schema="apdb_bench", max_size=2)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    if await apdb.count("DiaObjectLast") < N_PREFILL:
        for b in range(N_PREFILL // BATCH):
            ra, dec = random_sky(rng, BATCH, RA0, DEC0, FIELD_HALF)
            src = dia_sources(rng, ra, dec, 1000 + b, 0, MJD - 30, packer=IdPacker(1))
            src["diaObjectId"] = src["diaSourceId"].copy()
            await apdb.store(1000 + b, 0, src, dia_objects_from_sources(src, MJD - 30))
    prefill_s = time.perf_counter() - t
    region = Region.box(RA0, DEC0, 1.55, pad_arcsec=10)
    t0 = time.perf_counter()
    pre = await apdb.preload(region, MJD)
    t1 = time.perf_counter()
    n_obj = len(pre.objects["diaObjectId"])
    k = rng.choice(n_obj, 7000, replace=False)
    nra, ndec = random_sky(rng, N_SRC - 7000, RA0, DEC0, 1.5)
    ra = np.r_[pre.objects["ra"][k], nra]
    dec = np.r_[pre.objects["dec"][k], ndec]
    visit = int(time.time()) % 1_000_000 + 10_000
    src = dia_sources(rng, ra, dec, visit, 1, MJD, flux=np.full(N_SRC, 6000.0))
    res = associate(src, pre.objects, pre.sources, pre.forced_sources, MJD,
                    object_pixels=pre.objects["pixelId"])  # fmt: skip
    t2 = time.perf_counter()
    stored = await apdb.store(visit, 1, res.sources, res.objects)
    t3 = time.perf_counter()
    out = {
        "benchmark": "apdb",
        "dia_objects_prefilled": await apdb.count("DiaObjectLast"),
        "prefill_s": prefill_s,
        "visit_region_deg": 3.1,
        "preloaded_objects": n_obj,
        "preloaded_dia_sources": len(pre.sources["diaSourceId"]),
        "n_dia_sources": N_SRC,
        "preload_s": t1 - t0,
        "associate_s": t2 - t1,
        "store_s": t3 - t2,
        "preload_plus_store_s": (t1 - t0) + (t3 - t2),
        "stored": stored.stored,
        "target_s": 1.0,
        "lsst_dax_apdb": "installs from PyPI (30.2026.4100); side-by-side run not implemented yet",
    }
    await apdb.close()
    return out


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_dsn(os.environ.get("DMCS_BENCH_DSN"), Path(tmp) / "pg") as dsn,
    ):
        print(json.dumps(asyncio.run(run(dsn)), indent=2))


if __name__ == "__main__":
    main()
