"""A replay's directory across runs: clean, resume, and what a killed run left behind.

``<out>/replay.json`` records each run: its options, its PID, a run id and how it ended
(``running`` until it ends, so a run killed by SIGKILL still reads ``running`` with a dead
PID). The next run in the same directory decides from it:

* ``--fresh``, other options, or a previous run that completed: replay **again** from a
  clean state (the components' data, staging, reports and the database are removed; the
  simulated night is kept and reused when it matches);
* a previous run that was interrupted or ended incomplete: **resume** it (everything is
  kept; every layer ignores what it already did, and completion is judged from the record);
  one that failed with an error starts clean, so a broken state never blocks the next run;
* another replay still running in the directory: refused. Each run holds ``<out>/replay.lock``
  (:func:`claim`) from before it reads the record until it has written how it ended, so two
  replays started at the same instant cannot both decide from the same record.

With ``--nodes N`` a run starts a local N-node Ray cluster (:func:`start_cluster`) and stops
every node of it at exit (:func:`stop_cluster`), also after an error or Ctrl-C.

Every process a run starts (Ray, the embedded PostgreSQL, CCD worker processes) inherits
``DMCS_REPLAY_RUN=<run id>`` from it, which is how a later run finds and stops what a
killed run left, and how a run checks at exit that nothing of its own is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from actors.cluster import LocalCluster
from base.postgres import postmaster_pid
from state.durable import write_durably
from state.errors import ConfigurationError, StorageError

log = logging.getLogger("dmcs.replay")

RUN_FILE = "replay.json"
LOCK_FILE = "replay.lock"
RUN_ENV = "DMCS_REPLAY_RUN"
#: What a clean replay removes from ``<out>`` (the night is kept).
CLEAN_PATHS = ("data", "staging", "reports", "summary.json", "pg")

Mode = Literal["new", "fresh", "again", "resume"]


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    pid: int
    options: dict[str, Any]
    status: str  # running | complete | incomplete | failed
    started: float
    ended: float | None = None


@dataclass(frozen=True)
class Decision:
    mode: Mode
    why: str
    previous: RunRecord | None

    @property
    def clean(self) -> bool:
        return self.mode in ("fresh", "again")


def read_run(out: Path) -> RunRecord | None:
    path = out / RUN_FILE
    try:
        return RunRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        log.warning("ignoring the unreadable %s (%s)", path, e)
        return None


def write_run(out: Path, run: RunRecord) -> None:
    write_durably(out / RUN_FILE, json.dumps(asdict(run), indent=2).encode())


def _replay_alive(pid: int) -> bool:
    """True if ``pid`` is a live ``dmcs replay`` other than this process."""
    if pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "replay" in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@contextlib.contextmanager
def claim(out: Path) -> Iterator[None]:
    """Hold ``out`` for this run; ConfigurationError if another process holds it.

    A POSIX record lock on ``<out>/replay.lock``: the kernel releases it when the process
    ends, SIGKILL included, and a forked child does not inherit it, so a killed run never
    blocks the next one.
    """
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise ConfigurationError(
                f"another dmcs replay is running in {out}; wait for it, stop it, or give"
                " another --out"
            ) from e
        yield
    finally:
        os.close(fd)


def decide(out: Path, options: dict[str, Any], fresh: bool) -> Decision:
    """Clean, resume or refuse, from the record of the previous run in ``out``."""
    previous = read_run(out)
    if previous is not None and _replay_alive(previous.pid):
        raise ConfigurationError(
            f"another dmcs replay (pid {previous.pid}) is running in {out}; "
            "wait for it, stop it, or give another --out"
        )
    leftovers = [p for p in CLEAN_PATHS if (out / p).exists()]
    if fresh:
        return Decision("fresh", "--fresh", previous)
    if previous is None:
        if leftovers:
            return Decision("again", f"{out} holds data of an unrecorded replay", None)
        return Decision("new", f"the first replay in {out}", None)
    if previous.options != options:
        changed = sorted(
            k for k in {*options, *previous.options} if options.get(k) != previous.options.get(k)
        )
        return Decision(
            "again",
            f"the options differ from the previous replay's ({', '.join(changed)})",
            previous,
        )
    if previous.status == "complete":
        return Decision("again", "the previous replay completed", previous)
    if previous.status == "failed":
        # A run that failed (rather than being killed or ending incomplete) may have failed
        # on what it would resume from (a database that no longer starts): start clean.
        why = "the previous replay failed with an error (see its summary)"
        return Decision("again", why, previous)
    how = {"running": "was interrupted", "interrupted": "was stopped"}.get(
        previous.status, f"ended {previous.status}"
    )
    return Decision("resume", f"the previous replay (pid {previous.pid}) {how}", previous)


def processes_of(run_id: str) -> list[psutil.Process]:
    """Live processes (other than this one) started by the run ``run_id``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(RUN_ENV) == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _describe(procs: list[psutil.Process]) -> str:
    names = []
    for p in procs[:8]:
        try:
            names.append(f"{p.name()} ({p.pid})")
        except psutil.NoSuchProcess:
            continue
    return ", ".join(names) + (f", … ({len(procs)} in all)" if len(procs) > 8 else "")


def stop_processes(procs: list[psutil.Process], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds."""
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace)


def stop_leftovers(
    previous: RunRecord | None, pgdata: Path, keep_postgres: bool, say: Callable[[str], None]
) -> None:
    """Stop what an earlier run left running: its processes, and its PostgreSQL unless kept."""
    postgres = postmaster_pid(pgdata) if (pgdata / "postmaster.pid").exists() else None
    procs = []
    for p in processes_of(previous.run_id) if previous else []:
        try:
            ancestors = {a.pid for a in p.parents()}
        except psutil.NoSuchProcess:
            continue
        if postgres is not None and postgres in {p.pid, *ancestors}:
            continue  # the server and its backends: handled below
        procs.append(p)
    if procs:
        say(f"stopping {len(procs)} processes left by the earlier replay: {_describe(procs)}")
        stop_processes(procs)
    if postgres and not keep_postgres:
        say(f"stopping the PostgreSQL left running by an earlier replay (pid {postgres})")
        stop_processes([psutil.Process(postgres)])
    elif postgres:
        say(f"reusing the PostgreSQL left running by the earlier replay (pid {postgres})")


def clean(out: Path, say: Callable[[str], None]) -> None:
    """Remove what a clean replay starts without (see :data:`CLEAN_PATHS`)."""
    removed: list[str] = []
    for name in CLEAN_PATHS:
        path = out / name
        try:
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(name + "/")
            elif path.exists():
                path.unlink()
                removed.append(name)
        except OSError as e:
            done = f" (already removed: {', '.join(removed)})" if removed else ""
            raise StorageError(
                f"cannot remove the previous replay's {name} in {out}: {e}{done}; "
                "fix its permissions, or give another --out"
            ) from e
    if removed:
        say(f"removed the previous replay's {', '.join(removed)}")


def begin(out: Path, options: dict[str, Any]) -> RunRecord:
    """Record this run as running, and tag every process it starts from now on."""
    run = RunRecord(
        run_id=uuid.uuid4().hex, pid=os.getpid(), options=options, status="running",
        started=time.time(),
    )  # fmt: skip
    os.environ[RUN_ENV] = run.run_id
    write_run(out, run)
    return run


def finish(out: Path, run: RunRecord, status: str) -> RunRecord:
    ended = RunRecord(**{**asdict(run), "status": status, "ended": time.time()})
    write_run(out, ended)
    return ended


def reap(run: RunRecord, say: Callable[[str], None], grace: float = 15.0) -> list[str]:
    """At exit: wait for the run's processes to end; stop any that do not. Returns them."""
    deadline = time.monotonic() + grace
    procs = processes_of(run.run_id)
    while procs and time.monotonic() < deadline:
        time.sleep(0.5)
        procs = processes_of(run.run_id)
    if not procs:
        return []
    left = _describe(procs)
    say(f"stopping {len(procs)} processes of this replay still running at exit: {left}")
    stop_processes(procs)
    return [left]


def start_cluster(
    nodes: int, cpus: dict[str, float], say: Callable[[str], None], timeout: float
) -> LocalCluster:
    """A local ``nodes``-node Ray cluster (its processes carry this run's tag); ``cpus``: the
    logical CPUs each role's components ask for (every node of the role offers them all)."""
    say(f"starting a local Ray cluster of {nodes} nodes (1 summit, {nodes - 1} base)…")
    return LocalCluster(nodes, cpus=cpus, timeout=timeout)


def stop_cluster(cluster: LocalCluster, say: Callable[[str], None]) -> None:
    """Kill every node of ``cluster``; what is left of them is then found by :func:`reap`."""
    cluster.shutdown()
    say("stopped the local Ray cluster")
