"""How a replay decides between clean and resume, and how it finds and stops what a run left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from commands.replay import session
from state.errors import ConfigurationError

OPTIONS = {"camera": "mini", "visits": 2, "seed": 1, "processors": 2}
DEAD_PID = 2**22 + 4321


def _record(status: str, pid: int = DEAD_PID, **options: object) -> session.RunRecord:
    return session.RunRecord(
        run_id="r1", pid=pid, options={**OPTIONS, **options}, status=status, started=1.0
    )


def test_a_first_replay_is_new_and_unrecorded_data_is_cleaned(tmp_path: Path) -> None:
    assert session.decide(tmp_path, OPTIONS, fresh=False).mode == "new"
    (tmp_path / "data").mkdir()
    decision = session.decide(tmp_path, OPTIONS, fresh=False)
    assert decision.mode == "again" and decision.clean
    assert "unrecorded" in decision.why


@pytest.mark.parametrize(
    ("status", "mode"),
    [("complete", "again"), ("running", "resume"), ("incomplete", "resume"), ("failed", "again")],
)
def test_the_previous_run_decides(tmp_path: Path, status: str, mode: str) -> None:
    session.write_run(tmp_path, _record(status))
    decision = session.decide(tmp_path, OPTIONS, fresh=False)
    assert decision.mode == mode
    assert decision.previous == _record(status)
    if status == "running":
        assert f"(pid {DEAD_PID}) was interrupted" in decision.why


def test_fresh_and_other_options_start_clean(tmp_path: Path) -> None:
    session.write_run(tmp_path, _record("running"))
    assert session.decide(tmp_path, OPTIONS, fresh=True).mode == "fresh"
    other = session.decide(tmp_path, {**OPTIONS, "seed": 2, "visits": 3}, fresh=False)
    assert other.mode == "again"
    assert "(seed, visits)" in other.why


def test_an_unreadable_record_is_ignored(tmp_path: Path) -> None:
    (tmp_path / session.RUN_FILE).write_text("{not json")
    assert session.read_run(tmp_path) is None


def test_a_replay_still_running_in_the_directory_is_refused(tmp_path: Path) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "replay"])
    try:
        session.write_run(tmp_path, _record("running", pid=alive.pid))
        with pytest.raises(ConfigurationError, match=f"another dmcs replay \\(pid {alive.pid}\\)"):
            session.decide(tmp_path, OPTIONS, fresh=True)
    finally:
        alive.kill()
        alive.wait()
    assert session.decide(tmp_path, OPTIONS, fresh=False).mode == "resume"


def test_clean_keeps_the_night(tmp_path: Path) -> None:
    for name in ("data", "staging", "reports", "pg", "night"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    (tmp_path / "summary.json").write_text("{}")
    said: list[str] = []
    session.clean(tmp_path, said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["night"]
    assert said and "data/" in said[0] and "summary.json" in said[0]


def test_processes_of_a_run_are_found_and_stopped(tmp_path: Path) -> None:
    run = replace(_record("running"), run_id=f"test-{os.getpid()}-{time.time_ns()}")
    env = {**os.environ, session.RUN_ENV: run.run_id}
    # One child ignores SIGTERM, so stopping it needs the SIGKILL after the grace period.
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    children = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env),
        subprocess.Popen([sys.executable, "-c", code], env=env),
    ]
    try:
        deadline = time.monotonic() + 10
        while len(session.processes_of(run.run_id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(p.pid for p in session.processes_of(run.run_id)) == sorted(
            c.pid for c in children
        )
        said: list[str] = []
        left = session.reap(run, said.append, grace=0.5)
        assert len(left) == 1 and "stopping 2 processes" in said[0]
        assert not any(psutil.pid_exists(c.pid) for c in children)  # reaped by reap
        assert session.processes_of(run.run_id) == []
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


async def test_a_clean_replay_on_a_given_database_drops_only_its_schemas(pg_dsn: str) -> None:
    import asyncpg

    from commands.replay.main import _drop_schemas
    from commands.replay.night_system import database_schemas, night_system_config
    from config.system import load_system_config

    config = night_system_config(
        load_system_config(None), dsn=pg_dsn, processors=2, schema_prefix="drop_"
    )
    names = database_schemas(config)
    assert names == {"drop_registry", "drop_apdb", "drop_alerts", "drop_prompt"}
    conn = await asyncpg.connect(pg_dsn)
    try:
        for name in [*names, "drop_keep"]:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')
            await conn.execute(f'CREATE TABLE IF NOT EXISTS "{name}".t (x int)')
        said: list[str] = []
        await _drop_schemas(pg_dsn, config, said.append)
        rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'drop_%'")
        left = {r["nspname"] for r in rows}
        assert left == {"drop_keep"}
        assert "drop_apdb" in said[0]
        await conn.execute('DROP SCHEMA "drop_keep" CASCADE')
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nodes": 0}, "--nodes must be at least 1"),
        ({"nodes": 3, "address": "10.0.0.1:6379"}, "excludes --address"),
        ({"nodes": 2, "kill_node_at": 1}, "needs --nodes 3 or more"),
        ({"nodes": 3, "kill_node_at": 5, "visits": 3}, "not a visit of the night"),
    ],
)
async def test_multi_node_options_that_cannot_work_are_refused_before_anything_starts(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    from commands.replay.main import run_replay
    from commands.replay.options import ReplayOptions

    out = tmp_path / "replay"
    with pytest.raises(ConfigurationError, match=message):
        await run_replay(ReplayOptions(out=out, **options))  # type: ignore[arg-type]
    assert not out.exists()  # refused before the directory, the night or Ray


def _a_completed_replay(out: Path) -> dict[str, str]:
    """``out`` as a completed replay leaves it: its record and results, by path → content."""
    session.write_run(out, _record("complete"))
    files = {"data/f": "data", "reports/performance.json": "{}", "summary.json": "{}"}
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return files


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speed", "0"], "speed must be > 0"),
        (["--speed", "nan"], "speed must be > 0"),
        (["--visits", "0"], "--visits must be at least 2"),
        (["--camera", "nope"], "unknown camera 'nope'"),
        (["--processors", "0"], "need at least one CCD processor"),
        (["--drain", "-1"], "--drain must be >= 0"),
        (["--night", "{empty}"], "is not a simulated night: no manifest.json"),
        (["--night", "{corrupt}"], "cannot read .*manifest.json"),
        (["--night", "{file}"], "is not a directory"),
        (["--opsim", "{file}"], "is not a readable SQLite file"),
        (["--dsn", "garbage"], "the database DSN must be a postgresql://"),
    ],
)
def test_bad_replay_options_are_refused_before_the_previous_replay_is_cleaned(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from commands.cli import main

    out = tmp_path / "replay"
    kept = _a_completed_replay(out)
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "manifest.json").write_text('{"camera": "mi')
    (tmp_path / "file").write_text("not a night")
    paths = {name: str(tmp_path / name) for name in ("empty", "corrupt", "file")}
    argv = ["replay", "--out", str(out), *(a.format(**paths) for a in args)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1
    assert {name: (out / name).read_text() for name in kept} == kept
    assert session.read_run(out) == _record("complete")


def test_a_replay_that_holds_the_out_is_not_raced(tmp_path: Path) -> None:
    """Two replays started at once in a completed ``--out``: the one that holds it is between
    reading the record and writing its own (stopping leftovers, cleaning), so the record still
    reads "complete, dead pid". Before, the second decided from it too and cleaned the first's
    fresh start; now it is refused and nothing is touched. The holder here is a child process
    taking the same lock; killing it (as SIGKILL would) frees the directory."""
    from click.testing import CliRunner

    from commands.cli import main

    out = tmp_path / "replay"
    kept = _a_completed_replay(out)
    hold = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
        " fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out / "replay.lock")], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        result = CliRunner().invoke(main, ["replay", "--out", str(out), "--visits", "2"])
        assert result.exit_code == 1, result.output
        assert f"another dmcs replay is running in {out}" in result.output, result.output
        assert {name: (out / name).read_text() for name in kept} == kept
        assert session.read_run(out) == _record("complete")
    finally:
        holder.kill()
        holder.wait()
    with session.claim(out):
        assert session.decide(out, OPTIONS, fresh=False).mode == "again"


def test_a_previous_replay_that_cannot_be_removed_is_one_clear_error(tmp_path: Path) -> None:
    """``<out>/data`` a symlink to another disk (or a folder the user may not change): the
    clean start of ``--fresh`` cannot remove it. Before: shutil's traceback; now one line that
    names what and where, and the record of the previous run is left as it was."""
    from click.testing import CliRunner

    from commands.cli import main

    out = tmp_path / "replay"
    _a_completed_replay(out)
    (out / "data" / "f").rename(tmp_path / "f")
    (out / "data").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "data").symlink_to(tmp_path / "elsewhere")
    result = CliRunner().invoke(main, ["replay", "--out", str(out), "--visits", "2", "--fresh"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(
        f"Error: StorageError: cannot remove the previous replay's data in {out}: "
    ), result.output
    assert last.endswith("fix its permissions, or give another --out"), result.output
    assert "Traceback" not in result.output
    assert session.read_run(out) == _record("complete")


def test_an_unreachable_ray_address_costs_not_the_previous_replay(tmp_path: Path) -> None:
    """Before: ``--address`` with nothing there (a typo) cleaned the completed replay in
    ``--out`` (its reports gone), simulated the night and started PostgreSQL, then failed
    after ``--startup-timeout``. Now it is waited for before anything is cleaned."""
    import socket

    from click.testing import CliRunner

    from commands.cli import main

    out = tmp_path / "replay"
    kept = _a_completed_replay(out)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    argv = ["replay", "--out", str(out), "--address", address, "--startup-timeout", "1"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1, result.output
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(
            f"Error: StartupError: the Ray cluster at {address} is not reachable within 1 s"
        )
    ), result.output
    assert {name: (out / name).read_text() for name in kept} == kept
    assert session.read_run(out) == _record("complete")


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from commands.cli import main

    (tmp_path / "out").write_text("x")
    result = CliRunner().invoke(main, ["replay", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().endswith("exists and is not a directory"), result.output


#: ``dmcs ARGS`` as a terminal's Ctrl-C finds it: a shell that started this suite in the
#: background left SIGINT ignored, and an ignored SIGINT is inherited (Python then neither
#: raises KeyboardInterrupt nor lets asyncio cancel the replay).
_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " sys.argv[0] = 'dmcs'; runpy.run_module('commands.cli', run_name='__main__')"
)


def test_ctrl_c_says_the_night_resumes_and_exits_130(tmp_path: Path) -> None:
    """SIGINT while the night is being simulated: the replay records the interruption and
    says how to go on (it printed only click's 'Aborted!' and exited 1)."""
    import json
    import signal

    out = tmp_path / "replay"
    argv = ["replay", "--camera", "mini", "--visits", "2", "--out", str(out), "--no-progress"]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITH_CTRL_C, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert proc.stdout is not None
        said = []
        for line in proc.stdout:
            said.append(line)
            if line.startswith("simulating"):
                proc.send_signal(signal.SIGINT)
                break
        said.extend(proc.stdout)
        assert proc.wait(timeout=120) == 130, "".join(said)
    finally:
        proc.kill()
        proc.wait()
    assert said[-1].startswith(f"interrupted; the same command resumes the night in {out}")
    assert json.loads((out / "summary.json").read_text())["failure"].startswith("interrupted")
    assert session.read_run(out).status == "interrupted"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--visits", "3"], r"\(2 visits of mini, seed 1\); --visits 3 would need another night"),
        (["--camera", "comcam", "--seed", "2"], "--camera comcam and --seed 2 would need"),
        (["--nodes", "3", "--kill-node-at", "3"], r"not a visit of the night \(1 to 2\)"),
    ],
)
def test_options_that_contradict_the_given_night_are_refused(
    tmp_path: Path, mini_night: Path, args: list[str], message: str
) -> None:
    """``--night`` replays that night as simulated: a typed ``--visits``/``--camera``/
    ``--seed`` that differs was silently ignored, and ``--kill-node-at`` was checked against
    the default ``--visits`` instead of the night's own visits."""
    from click.testing import CliRunner

    from commands.cli import main

    out = tmp_path / "replay"
    argv = ["replay", "--night", str(mini_night), "--out", str(out), *args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output
    assert not out.exists()


def test_options_that_agree_with_the_given_night_pass(mini_night: Path) -> None:
    from commands.replay.options import ReplayOptions

    ReplayOptions(night=mini_night, visits=2, seed=1, given=frozenset({"visits", "seed"})).check()
    ReplayOptions(night=mini_night, visits=9, camera="comcam").check()  # defaults, not typed
    ReplayOptions(night=mini_night, nodes=3, kill_node_at=2, visits=1).check()
