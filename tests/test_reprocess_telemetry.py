"""Reprocessing progress and failures as telemetry through a real gateway: coalesced progress,
every failure in order, a refused token or an unreachable gateway never stopping the run, and
``dmcs reprocess --url`` end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from base.reprocess.ledger import LEDGER_SCHEMA
from commands.client import Client
from commands.reprocess_telemetry import RunTelemetry, http_base
from commands.server import RunningSystem
from state.events import REPROCESS_SOURCE, Event
from tests.conftest import TOKENS, component_spec
from tests.standard import until, until_row
from tests.test_reprocess import DAY_OBS, dmcs, register_raws

REGISTRY = "rt_registry"


@pytest.fixture(scope="module")
async def running(system_factory: Any) -> RunningSystem:
    return await system_factory(
        component_spec("HeaderService", "summit.header_service:HeaderService")
    )


@pytest.fixture(scope="module")
async def night(pg_dsn: str, mini_night: Path) -> Path:
    """The mini night with its raws registered in a registry schema of this module's own."""
    await register_raws(pg_dsn, mini_night, REGISTRY)
    return mini_night


@contextlib.asynccontextmanager
async def watching(running: RunningSystem) -> AsyncIterator[list[Event]]:
    """Every Reprocess event published from the moment this is entered."""
    seen: list[Event] = []
    async with (
        Client(running.ws_url) as watcher,
        await watcher.open_subscription([REPROCESS_SOURCE], snapshot=False) as events,
    ):

        async def collect() -> None:
            async for event in events:
                seen.append(event)

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_gateway_url_to_http_base() -> None:
    assert http_base("ws://127.0.0.1:8765/ws") == "http://127.0.0.1:8765"
    assert http_base("wss://dmcs.example.org/ws") == "https://dmcs.example.org"
    with pytest.raises(ValueError, match="not a gateway URL"):
        http_base("127.0.0.1:8765")


async def test_progress_is_coalesced_and_every_failure_arrives_in_order(
    running: RunningSystem,
) -> None:
    telemetry = RunTelemetry(running.ws_url, TOKENS["batch"], interval=0.5)
    async with watching(running) as seen:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(telemetry.run())
            telemetry.began("dr9", "release", 2)
            for done in range(201):
                telemetry.progress("ccd", done, 200)
                if done in (50, 120):
                    telemetry.failure(f"ccd:1/{done}", "worker lost", 1, False)
                if done == 120:
                    telemetry.failure(f"ccd:1/{done}", "bad_input:<b>x</b>", 2, True)
                await asyncio.sleep(0.005)
            telemetry.progress("region", 0, 3)
            telemetry.progress("region", 3, 3)
            telemetry.ended("failed")
            await telemetry.close()

        def last_status() -> str | None:
            progress = [e for e in seen if e.topic == "reprocessProgress"]
            return progress[-1].data["status"] if progress else None

        await until(lambda: last_status() == "failed")
    progress = [e.data for e in seen if e.topic == "reprocessProgress"]
    failures = [e.data for e in seen if e.topic == "reprocessFailure"]
    assert all(e.component == REPROCESS_SOURCE and e.kind == "telemetry" for e in seen)
    assert 3 <= len(progress) < 30, "coalesced to about one per interval, plus phase changes"
    ccd_done = [p["done"] for p in progress if p["phase"] == "ccd"]
    assert ccd_done == sorted(ccd_done) and ccd_done[-1] == 200
    final = progress[-1]
    assert (final["run"], final["mode"], final["workers"]) == ("dr9", "release", 2)
    assert (final["phase"], final["done"], final["total"], final["failed"]) == ("region", 3, 3, 1)
    assert [(f["unit"], f["attempt"], f["final"]) for f in failures] == [
        ("ccd:1/50", 1, False),
        ("ccd:1/120", 1, False),
        ("ccd:1/120", 2, True),
    ]
    assert failures[-1]["reason"] == "bad_input:<b>x</b>" and failures[-1]["run"] == "dr9"
    assert telemetry.stats() == {"sent": len(progress) + 3, "dropped": 0, "refused": None}


async def test_a_phase_ends_on_its_last_state_even_when_the_next_begins_at_once(
    running: RunningSystem,
) -> None:
    """The last ``done == total`` of a phase and the next phase's start arrive before the
    sender runs: both are sent, in order (coalescing once kept only the newer one)."""
    telemetry = RunTelemetry(running.ws_url, TOKENS["batch"], interval=30)
    async with watching(running) as seen:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(telemetry.run())
            telemetry.began("dr10", "release", 1)
            await until(lambda: telemetry.sent == 1)
            telemetry.progress("ccd", 7, 9)
            telemetry.progress("ccd", 9, 9)
            telemetry.progress("region", 0, 2)
            await until(lambda: telemetry.sent == 3)
            telemetry.ended("done")
            await telemetry.close()
        await until(lambda: sum(e.topic == "reprocessProgress" for e in seen) == 4)
    states = [(e.data["phase"], e.data["done"]) for e in seen if e.topic == "reprocessProgress"]
    assert states == [("ccd", 0), ("ccd", 9), ("region", 0), ("region", 0)]


async def test_a_refused_token_costs_telemetry_not_the_run(running: RunningSystem) -> None:
    telemetry = RunTelemetry(running.ws_url, TOKENS["ocs"])
    async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
        tg.create_task(telemetry.run())
        telemetry.began("dr8", "release", 1)
        await until(lambda: telemetry.refused is not None)
        telemetry.progress("ccd", 1, 1)
        telemetry.ended("done")
        await telemetry.close()
    assert "403" in telemetry.refused and "may not send batch telemetry" in telemetry.refused
    assert telemetry.sent == 0


async def test_an_unreachable_gateway_never_blocks_the_run() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    telemetry = RunTelemetry(f"ws://127.0.0.1:{port}/ws", TOKENS["batch"], interval=0.2)
    async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
        tg.create_task(telemetry.run())
        telemetry.began("dr7", "release", 1)
        telemetry.failure("ccd:1/1", "worker lost", 1, True)
        for done in range(1, 11):
            telemetry.progress("ccd", done, 10)
            await asyncio.sleep(0.05)
        telemetry.ended("failed")
        await telemetry.close()
    stats = telemetry.stats()
    assert stats["sent"] == 0 and stats["refused"] is None and stats["dropped"] >= 1


async def test_cli_publishes_its_progress_to_the_gateway(
    running: RunningSystem, pg_dsn: str, night: Path
) -> None:
    async with watching(running) as seen:
        rc, out = await dmcs(
            "reprocess",
            "--dsn",
            pg_dsn,
            "--registry-schema",
            REGISTRY,
            "--night",
            str(DAY_OBS),
            "--night-dir",
            str(night),
            "--release",
            "telemetry",
            "--release-id",
            "12",
            "--local",
            "--json",
            "--url",
            running.ws_url,
            "--token",
            TOKENS["batch"],
        )
        assert rc == 0, out
        summary = json.loads(out.strip().splitlines()[-1])
        await until(lambda: any(e.data.get("status") == "done" for e in seen))
    assert summary["telemetry"]["refused"] is None and summary["telemetry"]["sent"] >= 3
    progress = [e.data for e in seen if e.topic == "reprocessProgress"]
    assert progress[0]["status"] == "running" and progress[0]["run"] == "telemetry"
    assert {p["phase"] for p in progress} == {"ccd", "region", "characterize"}
    assert max(p["done"] for p in progress if p["phase"] == "ccd") == summary["processed"] == 8
    assert progress[-1]["status"] == "done" and progress[-1]["failed"] == 0


async def test_cli_refuses_a_malformed_gateway_url(pg_dsn: str, night: Path) -> None:
    rc, out = await dmcs(
        "reprocess",
        "--dsn",
        pg_dsn,
        "--night",
        str(DAY_OBS),
        "--night-dir",
        str(night),
        "--release",
        "badurl",
        "--release-id",
        "13",
        "--local",
        "--url",
        "localhost:8765",
    )
    assert rc == 2 and "--url" in out and "not a gateway URL" in out


def _interruptible() -> None:
    """In the child: Ctrl-C's default, even where the suite was started in the background by
    a shell without job control, which ignores SIGINT for its children (Python then installs no
    KeyboardInterrupt handler and the run would not notice the signal)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_an_interrupted_run_says_so_on_the_dashboard_and_in_the_ledger(
    running: RunningSystem, pg_dsn: str, night: Path
) -> None:
    args = [
        *("reprocess", "--dsn", pg_dsn, "--registry-schema", REGISTRY),
        *("--night", str(DAY_OBS), "--night-dir", str(night), "--local"),
        *("--release", "halted", "--release-id", "14"),
        *("--url", running.ws_url, "--token", TOKENS["batch"]),
    ]
    async with watching(running) as seen:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "dmcs"),
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_interruptible,
        )
        try:
            # Once the ledger holds the run (it is then interrupted, not refused or not begun):
            # on a quick machine the night's CCDs are done before its next progress is sent.
            in_ledger = f"SELECT count(*) FROM {LEDGER_SCHEMA}.release WHERE name = $1"
            await until_row(pg_dsn, in_ledger, "halted", timeout=120)
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), 60) != 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await until(lambda: any(e.data.get("status") == "interrupted" for e in seen))
    rc, out = await dmcs("reprocess", "status", "--dsn", pg_dsn, "--json")
    assert rc == 0, out
    assert next(r for r in json.loads(out) if r["name"] == "halted")["status"] == "interrupted"
