"""``dmcs replay`` as users run it: after a failed start, twice in one directory, again after a
SIGKILL, and with its PostgreSQL killed.

Each replay is the real command in a subprocess (2-visit ``mini`` nights; the first test
simulates its own, the PostgreSQL test replays the session's ``mini_night``), so what is
checked is what a user sees: the exit status, what it says, ``summary.json``, and that no
process of the run (Ray, the embedded PostgreSQL, CCD workers) outlives it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from base.postgres import postmaster_pid
from tests.replay_checks import apdb_check as _apdb_check
from tests.replay_checks import orphans as _orphans

ROOT = Path(__file__).resolve().parent.parent
TAG = "DMCS_TEST_REPLAY_TAG"
#: Generous: a 2-visit replay takes ~40 s alone and several times that on a loaded machine.
RUN_TIMEOUT = 900

#: Each replay starts its own Ray and embedded PostgreSQL, so the file is in those tiers.
pytestmark = [pytest.mark.timeout(2 * RUN_TIMEOUT + 300), pytest.mark.ray, pytest.mark.postgres]


def _command(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "commands.cli", "replay", "--visits", "2", "--speed", "20",
        "--out", str(out), "--no-progress", "--stall", "30", "--drain", "400", *extra,
    ]  # fmt: skip


def _env(tag: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), TAG: tag, "COLUMNS": "200"}


def _start(out: Path, tag: str, *extra: str) -> subprocess.Popen[str]:
    log = (out.parent / f"{out.name}-{uuid.uuid4().hex[:6]}.log").open("w")
    return subprocess.Popen(
        _command(out, *extra), cwd=ROOT, env=_env(tag), stdout=log, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _run(out: Path, tag: str, *extra: str) -> tuple[int, str, dict[str, Any]]:
    """Run one replay to its end: exit status, what it printed, its summary ({} if none)."""
    done = subprocess.run(
        _command(out, *extra), cwd=ROOT, env=_env(tag), capture_output=True, text=True,
        timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    (out.parent / f"{out.name}-{uuid.uuid4().hex[:6]}.log").write_text(output)
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    return done.returncode, output, summary


def _assert_no_orphans(tag: str, pgdata: Path) -> None:
    deadline = time.monotonic() + 20
    while (left := _orphans(tag, pgdata)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], "processes of the replay outlived it"


def _counts(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("visits", "ccdsExpected", "ccdsIngested", "ccdsProcessed", "ccdsFailed", "alerts")
    return {k: summary[k] for k in keys}


async def _wait_for_rows(pgdata: Path, table: str, n: int, proc: subprocess.Popen[str]) -> None:
    """Until the running replay has ``n`` rows in ``table`` of its database (mid-night)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    dsn = f"postgresql://postgres:@/postgres?host={pgdata}"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the replay ended before the kill"
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                if int(await conn.fetchval(f"SELECT count(*) FROM {table}")) >= n:
                    return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"no {n} rows in {table} within {RUN_TIMEOUT} s")


async def test_a_failed_start_three_sigkills_and_a_rerun_end_in_one_complete_night(
    tmp_path: Path,
) -> None:
    """One directory, used as a user would. A replay pointed at a Ray cluster that is not there
    says so before it simulates, starts or cleans anything, and blocks nothing; the night the
    first killed replay simulated is reused by every later run. The next replay is
    SIGKILLed three times, each run resuming the one before: during start-up (the night's
    products registered, Ray and the components starting), once the first raw is registered
    (the camera still sending, CCDs in ingest and processing), and once three CCDs have their
    outcome (others inside the APDB -> alert hand-off, which the outbox makes durable). The
    resumed night is complete with nothing duplicated, and the night replayed once more from a
    clean state gives the same counts: the kills lost nothing."""
    out, tag = tmp_path / "replay", uuid.uuid4().hex
    unreachable = ("--address", "127.0.0.1:1", "--startup-timeout", "2")
    rc, output, failed = await asyncio.to_thread(_run, out, tag, *unreachable)
    assert rc == 1
    assert "Traceback" not in output
    assert "StartupError: the Ray cluster at 127.0.0.1:1 is not reachable" in output
    assert failed == {}, "refused before the night: no summary"
    assert not (out / "pg").exists() and not (out / "night").exists()
    _assert_no_orphans(tag, out / "pg")

    killed = []
    for table, rows in (("registry.detectors", 1), ("registry.raws", 1), ("prompt.ccd_outcome", 3)):
        proc = _start(out, tag)
        try:
            await _wait_for_rows(out / "pg", table, rows, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        killed.append(proc.pid)
        assert postmaster_pid(out / "pg") is not None, "the killed replay's PostgreSQL is left"

    rc, output, resumed = await asyncio.to_thread(_run, out, tag)
    assert rc == 0, output[-3000:]
    assert "reusing the simulated night" in output
    assert "resuming the night" in output and f"(pid {killed[-1]}) was interrupted" in output
    assert "reusing the PostgreSQL left running by the earlier replay" in output
    assert resumed["complete"] and resumed["mode"] == "resume"
    assert resumed["ccdsIngested"] == resumed["ccdsExpected"] == 8
    assert resumed["ccdsProcessed"] + resumed["ccdsFailed"] == 8
    _assert_no_orphans(tag, out / "pg")
    apdb = await _apdb_check(out / "pg")
    assert apdb["duplicates"] == 0
    assert apdb["ccds_with_alerts_unlike_diasources"] == 0
    assert apdb["alerts"] == resumed["alerts"]

    rc, output, again = await asyncio.to_thread(_run, out, tag)
    assert rc == 0, output[-3000:]
    assert "replaying the night again" in output
    assert again["complete"] and again["mode"] == "again"
    assert _counts(again) == _counts(resumed)
    assert again["alertsThisRun"] == again["alerts"], "a clean replay publishes every alert"
    _assert_no_orphans(tag, out / "pg")


async def test_postgres_killed_mid_night_is_restarted_and_the_night_completes(
    tmp_path: Path, mini_night: Path
) -> None:
    out, tag = tmp_path / "replay", uuid.uuid4().hex
    proc = _start(out, tag, "--night", str(mini_night))
    try:
        await _wait_for_rows(out / "pg", "prompt.ccd_outcome", 1, proc)
        server = postmaster_pid(out / "pg")
        assert server is not None
        os.kill(server, signal.SIGKILL)
        rc = await asyncio.to_thread(proc.wait, RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    summary = json.loads((out / "summary.json").read_text())
    log_tail = "".join(p.read_text() for p in out.parent.glob(f"{out.name}-*.log"))[-4000:]
    why = {k: summary.get(k) for k in ("complete", "failure", "stalls", "failures", "recoveries")}
    assert rc == 0, f"{_counts(summary)} {why}\n{log_tail}"
    assert summary["complete"] and summary["mode"] == "new"
    assert any("PostgreSQL died and was restarted" in r for r in summary["recoveries"])
    assert summary["ccdsIngested"] == summary["ccdsExpected"] == 8
    _assert_no_orphans(tag, out / "pg")
