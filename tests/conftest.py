"""Shared fixtures: a Ray session, an embedded PostgreSQL and a running gateway."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from base.postgres import postgres_dsn

if TYPE_CHECKING:
    from commands.server import RunningSystem

#: Test tiers: a test that uses one of these fixtures (directly or through another fixture)
#: gets the marker, so ``-m "not ray and not postgres and not browser"`` (``scripts/test.sh
#: --fast``) runs the tests that need none of them. A test that starts its own Ray or
#: PostgreSQL (a replay in a subprocess, a server of its own) carries the marker explicitly.
TIER_FIXTURES = {
    "ray_session": "ray",
    "system_factory": "ray",
    "pg_dsn": "postgres",
    "browser": "browser",
}
TIER_MARKERS = {
    "ray": "needs a local Ray (the ray_session fixture)",
    "postgres": "needs PostgreSQL (the pg_dsn fixture)",
    "browser": "needs Chromium (the dashboard's browser tests)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, why in TIER_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {why}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker in sorted({TIER_FIXTURES[f] for f in used & TIER_FIXTURES.keys()}):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at after a run (screenshots, reports)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL: ``DMCS_TEST_DSN`` if set, else an embedded server for the session."""
    with postgres_dsn(os.environ.get("DMCS_TEST_DSN"), tmp_path_factory.mktemp("pg")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (2 CPUs, no dashboard)."""
    from actors.runtime import init_ray, shutdown_ray

    init_ray(address=None, num_cpus=2)
    yield
    shutdown_ray()


TOKENS = {
    "ocs": "ocs-token",
    "operator": "operator-token",
    "scientist": "scientist-token",
    "batch": "batch-token",
}


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens.toml"
    lines = ["[tokens]", *(f'"{token}" = "{who}"' for who, token in TOKENS.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


#: System names are unique in the session (a stopped system's named actors may linger).
_SYSTEM_NUMBERS = itertools.count(1)


@pytest.fixture(scope="module")
async def system_factory(
    ray_session: None, tokens_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Callable[..., Awaitable[RunningSystem]]]:
    """Start a system of the given components behind a gateway on a free loopback port.

    Every system has its own name, bus and data folder; all stop at the end of the test
    module that started them. (Kept to the session's end, the idle systems of every module
    went on heartbeating, polling and holding their CCD workers: on the 2-core CI machine,
    a load on every later test.)
    """
    from commands.server import serve
    from config.system import GatewayConfig, SystemConfig

    async with contextlib.AsyncExitStack() as stack:
        counter = _SYSTEM_NUMBERS

        async def make(
            *components: dict[str, Any], heartbeat_interval: float = 0.5, **gateway: Any
        ) -> RunningSystem:
            name = f"test{next(counter)}"
            config = SystemConfig.model_validate(
                {
                    "name": name,
                    "data_dir": tmp_path_factory.mktemp(name),
                    "heartbeat_interval": heartbeat_interval,
                    "gateway": GatewayConfig(tokens_file=tokens_file, port=0, **gateway),
                    "components": list(components),
                }
            )
            return await stack.enter_async_context(serve(config, port=0))

        yield make


def component_spec(name: str, cls: str, **extra: Any) -> dict[str, Any]:
    """A component entry as in the system TOML; commanded by 'ocs' and 'operator'."""
    return {"name": name, "class": cls, "authorized": ["ocs", "operator"], **extra}


@pytest.fixture(scope="session")
def mini_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated ``mini`` night, shared read-only: seed 1, 2 visits (one field, a pair),
    schedule, truth, calibrations, templates and pre-rendered raws (``dmcs simulate night``)."""
    from summit.simulation import plan_night, run_night

    out = tmp_path_factory.mktemp("mini_night")
    run_night(plan_night("mini", 2, 1, out), raws=True)
    return out


@pytest.fixture(scope="session")
def dense_mini_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``mini`` night of 2 visits near the Galactic centre (enough reference stars for a
    102″ CCD), shared read-only, for the CCD processing tests."""
    import dataclasses

    from config.cameras import load_camera
    from summit.schedule import generate_schedule, write_schedule
    from summit.simulation import plan_night, run_night

    out = tmp_path_factory.mktemp("dense_mini")
    cam = load_camera("mini")
    visits = [dataclasses.replace(v, ra=271.0, dec=-29.0) for v in generate_schedule(cam, 2, 1)]
    write_schedule(visits, out / "opsim.sqlite")
    run_night(plan_night("mini", 2, 1, out / "night", schedule=out / "opsim.sqlite"), raws=True)
    return out / "night"


@dataclass(frozen=True)
class ClusterReplay:
    """A ``dmcs replay --nodes N`` that ran to its end in a subprocess, and what it left."""

    returncode: int
    output: str
    summary: dict[str, Any]
    out: Path
    #: Read back from its database: duplicates, DIASources, alerts (tests/replay_checks.py).
    apdb: dict[str, int]
    #: Its processes (all nodes of the local cluster, PostgreSQL) still alive after it ended.
    orphans: list[str]


@pytest.fixture(scope="session")
def cluster_replay(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ClusterReplay]:
    """Run ``dmcs replay`` on a local multi-node Ray cluster (``--nodes``, actors/cluster.py)
    as users run it; each distinct set of arguments runs once a session and is shared."""
    import asyncio
    import json
    import subprocess
    import sys
    import time
    import uuid

    from tests.replay_checks import TAG, apdb_check, orphans

    root = Path(__file__).resolve().parent.parent
    done: dict[tuple[str, ...], ClusterReplay] = {}

    def run(*args: str, timeout: float = 900) -> ClusterReplay:
        if args in done:
            return done[args]
        out = tmp_path_factory.mktemp("cluster-replay") / "replay"
        tag = uuid.uuid4().hex
        command = [
            sys.executable, "-m", "commands.cli", "replay", "--speed", "20", "--out", str(out),
            "--no-progress", "--stall", "30", "--drain", "400", *args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(root), TAG: tag, "COLUMNS": "200"}
        ran = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        output = ran.stdout + ran.stderr
        (out.parent / "replay.log").write_text(output)
        deadline = time.monotonic() + 20
        while (left := orphans(tag, out / "pg")) and time.monotonic() < deadline:
            time.sleep(1)
        summary = json.loads((out / "summary.json").read_text())
        apdb = asyncio.run(apdb_check(out / "pg"))
        done[args] = ClusterReplay(ran.returncode, output, summary, out, apdb, left)
        return done[args]

    return run


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def localhost_addresses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses ``localhost`` resolves to: 127.0.0.1 and, where this machine has an IPv6
    loopback, ::1 (resolved as where /etc/hosts lists both, when this one lists only the
    first); the ::1 half is left out, for the test to skip, without an IPv6 loopback."""
    resolve = socket.getaddrinfo
    if not _ipv6_loopback():
        return ["127.0.0.1"]

    def both(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        found = resolve(host, port, *args, **kwargs)
        if host == "localhost" and not any(f[0] == socket.AF_INET6 for f in found):
            found += resolve("::1", port, *args, **kwargs)
        return found

    monkeypatch.setattr(socket, "getaddrinfo", both)
    return ["127.0.0.1", "::1"]
