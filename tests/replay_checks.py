"""Checks on a finished replay from the outside: its database, and what of it still runs."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import psutil

from base.postgres import embedded_postgres
from base.reliability import alert_threshold, alertable_sql, load_reliability_model

#: The environment variable a test tags the processes of its replays with.
TAG = "DMCS_TEST_REPLAY_TAG"


def orphans(tag: str, pgdata: Path, tag_env: str = TAG) -> list[str]:
    """Live processes started by a replay with ``tag``, or serving its PostgreSQL."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            tagged = proc.environ().get(tag_env) == tag
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if tagged or str(pgdata) in cmdline:
            found.append(f"{proc.info['name']} ({proc.pid}): {cmdline[:120]}")
    return found


async def apdb_check(pgdata: Path) -> dict[str, int]:
    """Alertable DIASources (with an object, at or above the reliability threshold) and
    alerts per CCD, read back from the replay's own database."""
    with embedded_postgres(pgdata, supervise=False) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            dup = await conn.fetchval(
                'SELECT count(*) - count(DISTINCT "diaSourceId") FROM apdb."DiaSource"'
            )
            rows = await conn.fetch(
                'SELECT visit, detector, count(*) AS n FROM apdb."DiaSource"'
                f" WHERE {alertable_sql('$1')}"
                " GROUP BY visit, detector",
                alert_threshold(load_reliability_model(), None),
            )
            alerts = await conn.fetch("SELECT visit, detector, n_alerts FROM prompt.ccd_alerts")
        finally:
            await conn.close()
    dia = {(r["visit"], r["detector"]): int(r["n"]) for r in rows}
    published = {(r["visit"], r["detector"]): int(r["n_alerts"]) for r in alerts}
    return {
        "duplicates": int(dup),
        "ccds_with_alerts_unlike_diasources": sum(
            1 for k in published if published[k] != dia.get(k, 0)
        ),
        "diasources": sum(dia.values()),
        "alerts": sum(published.values()),
    }
