"""The embedded PostgreSQL: reused after its holder was SIGKILLed, restarted when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import psutil
import pytest

from base.postgres import (
    HANDLE_FILE,
    embedded_postgres,
    postmaster_pid,
    prune_dead_handles,
    wait_for_database,
)
from state.errors import StorageError

ROOT = Path(__file__).resolve().parent.parent
#: These tests start embedded PostgreSQL servers of their own.
pytestmark = pytest.mark.postgres

_HOLDER = """
import sys, time
from base.postgres import embedded_postgres
with embedded_postgres(__import__("pathlib").Path(sys.argv[1])) as dsn:
    print(dsn, flush=True)
    time.sleep(600)
"""


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def _start_and_kill_a_holder(pgdata: Path) -> subprocess.Popen[str]:
    """A process that starts the embedded server in ``pgdata``, SIGKILLed once it holds it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(pgdata)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("postgresql://")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    return holder


async def test_a_server_left_by_a_killed_holder_is_reused_then_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pgdata = tmp_path / "pg"
    holder = await asyncio.to_thread(_start_and_kill_a_holder, pgdata)
    left = postmaster_pid(pgdata)
    assert left is not None, "pgserver stops nothing when its holder is SIGKILLed"
    assert holder.pid in json.loads((pgdata / HANDLE_FILE).read_text())

    with caplog.at_level(logging.WARNING, "dmcs.postgres"), embedded_postgres(pgdata) as dsn:
        assert await _select_one(dsn) == 1
        assert postmaster_pid(pgdata) == left
        assert json.loads((pgdata / HANDLE_FILE).read_text()) == [os.getpid()]
    assert f"held by process {holder.pid}, which is gone; reusing it (pid {left})" in caplog.text
    assert _wait_gone(left), "the reused server must be stopped by its last holder"
    assert postmaster_pid(pgdata) is None


def test_pruning_keeps_live_holders(tmp_path: Path) -> None:
    (tmp_path / HANDLE_FILE).write_text(json.dumps([os.getpid(), 2**22 + 12345]))
    assert prune_dead_handles(tmp_path) == [2**22 + 12345]
    assert json.loads((tmp_path / HANDLE_FILE).read_text()) == [os.getpid()]
    (tmp_path / HANDLE_FILE).write_text("not json")
    assert prune_dead_handles(tmp_path) == []
    assert not (tmp_path / HANDLE_FILE).exists()


def _restart_listener() -> tuple[list[str], asyncio.Event, Callable[[str], None]]:
    """Notes, an event set from the supervisor's thread on each restart, and the callback."""
    notes: list[str] = []
    restarted = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_restart(note: str) -> None:
        notes.append(note)
        loop.call_soon_threadsafe(restarted.set)

    return notes, restarted, on_restart


async def test_a_killed_server_is_restarted_while_held(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    notes, restarted, on_restart = _restart_listener()
    with embedded_postgres(pgdata, on_restart=on_restart) as dsn:
        first = postmaster_pid(pgdata)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await asyncio.wait_for(restarted.wait(), 60)
        assert notes and "restarted" in notes[0]
        second = postmaster_pid(pgdata)
        assert second is not None and second != first
        await wait_for_database(dsn, timeout=30, starting=True)
        assert await _select_one(dsn) == 1
    assert _wait_gone(second)


async def test_a_restart_that_outlasts_pg_ctl_is_adopted_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash recovery slower than pgserver's 10 s ``pg_ctl`` wait (a loaded machine): the
    server that came up after the timeout is adopted, reported, and stopped at exit."""
    import pgserver.postgres_server as pg_module

    real = pg_module.pg_ctl
    calls: list[list[str]] = []

    def slow_pg_ctl(args: list[str], **kwargs: object) -> object:
        result = real(args, **kwargs)
        calls.append(args)
        if args[-1] == "start" and len(calls) == 1:
            raise subprocess.TimeoutExpired(["pg_ctl", *args], 10)
        return result

    pgdata = tmp_path / "pg"
    notes, restarted, on_restart = _restart_listener()
    with embedded_postgres(pgdata, on_restart=on_restart) as dsn:
        first = postmaster_pid(pgdata)
        assert first is not None
        monkeypatch.setattr(pg_module, "pg_ctl", slow_pg_ctl)
        os.kill(first, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(restarted.wait(), 60)
        assert notes and "restarted" in notes[0], "the late server was never reported"
        assert [a[-1] for a in calls] == ["start"], "a second server was started beside it"
        second = postmaster_pid(pgdata)
        assert second is not None and second != first
        assert await _select_one(dsn) == 1
    assert _wait_gone(second), "the adopted server outlived its holder"


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.5, 1.5])
def test_a_server_killed_as_its_holder_exits_is_no_error_and_leaves_nothing(
    tmp_path: Path, delay: float
) -> None:
    """PostgreSQL SIGKILLed just before the holder exits (a night ending as it dies): the exit
    is clean whether the supervisor has noticed, is restarting it, or has restarted it."""
    pgdata = tmp_path / "pg"
    with embedded_postgres(pgdata):
        first = postmaster_pid(pgdata)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        time.sleep(delay)
    deadline = time.monotonic() + 20
    while postmaster_pid(pgdata) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert postmaster_pid(pgdata) is None, "a restarted server outlived its holder"


async def test_an_unreachable_database_is_a_clear_error_within_the_timeout(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres:secret@/postgres?host={tmp_path}"
    began = time.monotonic()
    with pytest.raises(StorageError, match=r"did not accept a connection within 2 s") as info:
        await wait_for_database(dsn, timeout=2, starting=True)
    assert time.monotonic() - began < 15
    assert "secret" not in str(info.value)
