"""A night the processors cannot keep up with: newest visits first, the rest deferred to the
daytime catch-up, which then completes the night.

One ``dmcs replay`` of a 3-visit ``mini`` night in a subprocess, starved on purpose: one CCD
processor, every CCD held 3 s in its worker (``stall_detectors``), visits at 20× real cadence,
so 12 CCDs (36 s of work at least) arrive within seconds against a 15 s latency budget with
``[overload] policy = "newest_first"``. Then ``dmcs reprocess --catch-up`` on the replay's own
database. One run serves every assertion.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from base.postgres import embedded_postgres
from base.prompt_records import PromptRecords
from base.reliability import alert_threshold, alertable_sql, load_reliability_model
from base.reports.performance import performance_report
from config.system import DEFAULT_SYSTEM_FILE

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 900
VISITS, DETECTORS, BUDGET_S, HOLD_S = 3, 4, 15.0, 3.0
DAY_OBS = 20250505

pytestmark = [pytest.mark.timeout(2 * RUN_TIMEOUT + 300), pytest.mark.ray, pytest.mark.postgres]


def _system_file(out: Path) -> Path:
    text = DEFAULT_SYSTEM_FILE.read_text()
    tokens = (DEFAULT_SYSTEM_FILE.parent / "tokens.toml").resolve()
    text = text.replace('tokens_file = "tokens.toml"', f'tokens_file = "{tokens}"')
    text = text.replace(
        'policy = "fifo"\nlatency_budget = 60.0',
        f'policy = "newest_first"\nlatency_budget = {BUDGET_S}',
    )
    text, n = re.subn(
        r"(\nindex = 0\npool_size = 1\n)",
        rf"\1stall_detectors = [0, 1, 2, 3]\nstall_seconds = {HOLD_S}\n",
        text,
    )
    assert n == 1 and "newest_first" in text, "the default system file changed shape"
    path = out.parent / "system-starved.toml"
    path.write_text(text)
    return path


def _dmcs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip


async def _night(dsn: str) -> dict[str, Any]:
    """Outcomes, alerts against alertable DIASources per CCD, and the Performance Report."""
    conn = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        outcomes = await conn.fetch(
            "SELECT visit, detector, status, failure_type, recovery FROM prompt.ccd_outcome"
        )
        attempts = await conn.fetch("SELECT visit, detector, status FROM prompt.ccd_attempt")
        dia = await conn.fetch(
            'SELECT visit, detector, count(*) AS n FROM apdb."DiaSource"'
            f" WHERE {alertable_sql('$1')} GROUP BY visit, detector",
            alert_threshold(load_reliability_model(), None),
        )
        dup = await conn.fetchval(
            'SELECT count(*) - count(DISTINCT "diaSourceId") FROM apdb."DiaSource"'
        )
        alerts = await conn.fetch("SELECT visit, detector, n_alerts FROM prompt.ccd_alerts")
        records = await PromptRecords.connect(pool, "prompt")
        report = performance_report(await records.fetch_night(DAY_OBS))
    finally:
        await pool.close()
        await conn.close()
    key = lambda r: (int(r["visit"]), int(r["detector"]))  # noqa: E731
    return {
        "outcomes": {key(r): (r["status"], r["failure_type"], r["recovery"]) for r in outcomes},
        "deferred_attempts": {key(r) for r in attempts if r["status"] == "deferred"},
        "diasources": {key(r): int(r["n"]) for r in dia},
        "alerts": {key(r): int(r["n_alerts"]) for r in alerts},
        "duplicates": int(dup),
        "report": report,
    }


@pytest.fixture(scope="module")
def starved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("overload") / "replay"
    out.parent.mkdir(parents=True, exist_ok=True)
    system = _system_file(out)
    replay = _dmcs(
        "replay", "--visits", str(VISITS), "--speed", "20", "--processors", "1",
        "--config", str(system), "--out", str(out), "--no-progress", "--stall", "60",
        "--drain", "600",
    )  # fmt: skip
    (out.parent / "replay.log").write_text(replay.stdout + replay.stderr)
    summary = json.loads((out / "summary.json").read_text())
    with embedded_postgres(out / "pg", supervise=False) as dsn:
        before = asyncio.run(_night(dsn))
        catch_up = _dmcs(
            "reprocess", "--dsn", dsn, "--catch-up", "--night", str(DAY_OBS), "--local",
            "--archive-dir", str(out / "data" / "AlertPublisher" / "archive"), "--json",
        )  # fmt: skip
        after = asyncio.run(_night(dsn))
    (out.parent / "catch-up.log").write_text(catch_up.stdout + catch_up.stderr)
    return {
        "replay": replay,
        "summary": summary,
        "before": before,
        "catch_up": catch_up,
        "catch_up_summary": next(
            (json.loads(line) for line in catch_up.stdout.splitlines() if line.startswith("{")),
            None,
        ),
        "after": after,
    }


def test_the_starved_night_ends_with_the_old_ccds_deferred_not_lost(starved: dict) -> None:
    replay, summary, before = starved["replay"], starved["summary"], starved["before"]
    assert replay.returncode == 0, (replay.stdout + replay.stderr)[-3000:]
    n = VISITS * DETECTORS
    assert summary["complete"] and summary["ccdsExpected"] == summary["ccdsIngested"] == n
    assert summary["ccdsFailed"] == 0, summary["failures"]
    assert summary["ccdsDeferred"] >= 1, "36 s of work against a 15 s budget defers some"
    assert summary["ccdsProcessed"] + summary["ccdsDeferred"] == n, "every CCD ended"
    statuses = {status for status, _, _ in before["outcomes"].values()}
    assert statuses <= {"processed", "deferred"} and len(before["outcomes"]) == n
    deferred = {k for k, (status, _, _) in before["outcomes"].items() if status == "deferred"}
    assert len(deferred) == summary["ccdsDeferred"]
    assert all(before["outcomes"][k][1:] == ("overload", "catch-up") for k in deferred)
    visits = sorted({v for v, _ in before["outcomes"]})
    newest = [k for k in before["outcomes"] if k[0] == visits[-1]]
    assert any(k not in deferred for k in newest), "the newest visit is processed that night"
    assert before["report"]["deferral"]["ccdsDeferred"] == len(deferred)
    assert before["report"]["deferral"]["ccdsAwaitingCatchUp"] == len(deferred)


def test_the_catch_up_processes_exactly_the_deferred_ccds_and_completes_the_night(
    starved: dict,
) -> None:
    catch_up, before, after = starved["catch_up"], starved["before"], starved["after"]
    assert catch_up.returncode == 0, (catch_up.stdout + catch_up.stderr)[-3000:]
    deferred = {k for k, (status, _, _) in before["outcomes"].items() if status == "deferred"}
    done = starved["catch_up_summary"]
    assert done["missed"] == done["deferred"] == done["recovered"] == len(deferred)
    assert done["failed"] == {}
    assert {status for status, _, _ in after["outcomes"].values()} == {"processed"}
    assert {k for k, (_, _, rec) in after["outcomes"].items() if rec == "catch-up"} == deferred
    assert after["deferred_attempts"] == deferred, "the deferral stays in the attempt log"
    assert after["duplicates"] == 0
    assert set(after["alerts"]) == set(after["outcomes"]), "every CCD has its alert count"
    unlike = {k for k, n in after["alerts"].items() if n != after["diasources"].get(k, 0)}
    assert unlike == set(), "alerts = alertable DIASources, CCD by CCD, after the catch-up"
    deferral = after["report"]["deferral"]
    assert deferral["ccdsDeferred"] == deferral["ccdsCaughtUp"] == len(deferred)
    assert deferral["ccdsAwaitingCatchUp"] == 0
    assert deferral["visitsCaughtUp"] == deferral["visitsDeferred"] >= 1
