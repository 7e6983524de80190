"""Prompt-processing records benchmark: stage-time writes, night fetch, latency summary, reports.

On an embedded PostgreSQL (or DMCS_BENCH_DSN). Prints JSON. The peer of the bulk stage write is
the same rows through asyncpg ``executemany`` (pipelined) of the same INSERT ... ON CONFLICT DO
NOTHING, and, as a naive baseline, one awaited statement per row; ratios are their time / ours.
No target is set for these figures in ARCHITECTURE.md; they show that recording adds little to
the per-CCD path.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from base.postgres import postgres_dsn
from base.prompt_records import STAGES, CcdOutcome, PromptRecords, StageTime, VisitRecord
from base.reports import data_quality_report, performance_report, write_night_reports

N_DET = 189  # lsstcam
N_VISITS = 200
T0 = 1.8e9


def _visit_rows(visit: int, t0: float, rng: np.random.Generator) -> list[StageTime]:
    rows = [StageTime(visit, None, "endReadout", t0)]
    for d in range(N_DET):
        t = t0
        for s in STAGES[1:]:
            t += rng.exponential(2.0)
            rows.append(StageTime(visit, d, s, t))
    return rows


async def run(dsn: str) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await pool.execute('DROP SCHEMA IF EXISTS "prompt_bench" CASCADE')
    records = await PromptRecords.connect(pool, "prompt_bench")
    rng = np.random.default_rng(0)
    day_obs = 20260101

    per_visit, per_ccd, outcome = [], [], []
    cpu0 = time.process_time()
    for k in range(N_VISITS):
        visit = day_obs * 100000 + k
        await records.record_visit(
            VisitRecord(visit, day_obs, "lsstcam", "ugrizy"[k % 6], 150.0, -30.0,
                        60800.0 + k * 40 / 86400, 30.0, N_DET, k // 2)
        )  # fmt: skip
        rows = _visit_rows(visit, T0 + 40.0 * k, rng)
        if k % 2 == 0:  # a whole visit in one call
            t = time.perf_counter()
            await records.record_stages(rows)
            per_visit.append(time.perf_counter() - t)
        else:  # one call per CCD, as a CcdProcessor does
            await records.record_stages(rows[:1])
            for d in range(N_DET):
                t = time.perf_counter()
                await records.record_stages(rows[1 + 9 * d : 1 + 9 * (d + 1)])
                per_ccd.append(time.perf_counter() - t)
        for d in range(N_DET if k < 20 else 0):
            t = time.perf_counter()
            await records.record_outcome(
                CcdOutcome(visit, d, 1, "processed", n_dia_sources=30, n_alerts=30,
                           zeropoint=31.0, sky_level=900.0, seeing_arcsec=0.8, psf_fwhm_px=4.0,
                           astrom_rms_mas=12.0, n_sources=3000, flags=("edge",))
            )  # fmt: skip
            outcome.append(time.perf_counter() - t)
    write_cpu = time.process_time() - cpu0

    peer_rows = _visit_rows(day_obs * 100000 + 99999, T0, rng)
    t = time.perf_counter()
    await pool.executemany(
        'INSERT INTO "prompt_bench".stage_time (visit, detector, stage, tai)'
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        [(r.visit, r.stored_detector, r.stage, r.tai) for r in peer_rows],
    )
    peer_visit_s = time.perf_counter() - t
    naive_rows = _visit_rows(day_obs * 100000 + 99998, T0, rng)
    t = time.perf_counter()
    for r in naive_rows:
        await pool.execute(
            'INSERT INTO "prompt_bench".stage_time (visit, detector, stage, tai)'
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            r.visit, r.stored_detector, r.stage, r.tai,
        )  # fmt: skip
    naive_visit_s = time.perf_counter() - t

    cpu, t = time.process_time(), time.perf_counter()
    night = await records.fetch_night(day_obs=day_obs)
    fetch = (time.perf_counter() - t, time.process_time() - cpu)
    cpu = time.process_time()
    perf = performance_report(night)
    dq = data_quality_report(night)
    report_cpu = time.process_time() - cpu
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        write_night_reports(night, Path(tmp))
        write_cpu_reports = time.process_time() - cpu
    await pool.close()
    ours = float(np.median(per_visit))
    return {
        "benchmark": "prompt_records",
        "note": "wall-clock figures taken on a shared 2-core machine under contention",
        "stage_rows_per_visit": len(peer_rows),
        "record_stages_visit_p50_s": ours,
        "record_stages_ccd_p50_ms": 1e3 * float(np.median(per_ccd)),
        "record_stages_ccd_p95_ms": 1e3 * float(np.percentile(per_ccd, 95)),
        "record_outcome_p50_ms": 1e3 * float(np.median(outcome)),
        "peer_row_by_row_visit_s": peer_visit_s,
        "ratio_peer_over_ours": peer_visit_s / ours,
        "naive_one_statement_per_row_visit_s": naive_visit_s,
        "ratio_naive_over_ours": naive_visit_s / ours,
        "writes_cpu_s": write_cpu,
        "night": {"visits": N_VISITS, "ccds": N_VISITS * N_DET, "stage_rows": len(night.stages)},
        "fetch_night_wall_s": fetch[0],
        "fetch_night_cpu_s": fetch[1],
        "reports_dicts_cpu_s": report_cpu,
        "write_night_reports_cpu_s": write_cpu_reports,
        "latency_visits": perf["latency"]["visit"]["n"],
        "quality_ccds": sum(b["nCcds"] for b in dq["perBand"].values()),
    }


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        postgres_dsn(os.environ.get("DMCS_BENCH_DSN"), Path(tmp) / "pg") as dsn,
    ):
        print(json.dumps(asyncio.run(run(dsn)), indent=2))


if __name__ == "__main__":
    main()
