"""``dmcs replay`` end to end: simulate, start PostgreSQL + Ray + gateway, drive, report.

Everything runs on this machine by default: an embedded PostgreSQL in ``<out>/pg``, an
embedded Ray, the gateway on a free loopback port, the real client. ``--dsn`` and
``--address`` point it at an existing database or cluster instead.

A replay in a directory that already holds one replays the night again from a clean state
or resumes the interrupted one (``commands/replay/session.py`` decides and says which).
Whatever happens, the replay ends with a summary (``<out>/summary.json``) that says whether
the night completed and, if not, what failed or what it was still waiting for; the
traceback of an unexpected error goes to ``<out>/replay-error.log``, not the terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from rich.console import Console

from actors.cluster import LocalCluster, cpus_by_role
from actors.runtime import shutdown_ray, wait_reachable
from base.db import connect_pool
from base.postgres import postgres_dsn, wait_for_database
from commands.client import Client
from commands.night_driver import DriveProgress
from commands.replay import session
from commands.replay.display import ReplayDisplay
from commands.replay.night_system import (
    database_schemas,
    night_system_config,
    register_products,
)
from commands.replay.nodes import NodeKiller, placement_of
from commands.replay.options import ReplayOptions
from commands.replay.record import NightRecordReader
from commands.replay.runner import ReplayOutcome, replay_night
from commands.replay.summary import (
    alert_headline,
    failure_summary,
    fetch_records,
    night_summary,
    record_counts,
    write_reports,
)
from commands.replay.watch import NightWatcher
from commands.server import serve
from commands.signals import sigterm_cancels
from config.system import SystemConfig, load_system_config
from state.durable import writable_dir
from state.errors import ConfigurationError, DmcsError, RetriableError
from state.patience import call_patiently
from state.states import State
from summit.night_files import open_night
from summit.simulation import plan_night, run_night

log = logging.getLogger("dmcs.replay")
T = TypeVar("T")
#: How long the summary waits for a database that is away as the night ends (restarting).
REPORT_PATIENCE = 60.0

#: What the replay says it does, by the mode session.decide chose.
MODE_TEXT = {
    "new": "replaying the night",
    "fresh": "replaying the night from a clean state",
    "again": "replaying the night again from a clean state",
    "resume": "resuming the night",
}


def _night_is_ready(night: Path, opts: ReplayOptions) -> bool:
    manifest = night / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        data.get("camera") == opts.camera
        and data.get("seed") == opts.seed
        and int(data.get("visits", -1)) == opts.visits
        and bool(data.get("raws"))
        and opts.opsim is None
    )


async def prepare_night(opts: ReplayOptions, console: Console) -> Path:
    """The night to replay: given, reused when it matches, else simulated now."""
    if opts.night is not None:
        return opts.night  # checked by ReplayOptions.check
    night = opts.out / "night"
    if _night_is_ready(night, opts):
        console.print(f"reusing the simulated night in {night}")
        return night
    plan = plan_night(opts.camera, opts.visits, opts.seed, night, schedule=opts.opsim)
    console.print(f"simulating {len(plan.visits)} visits of {opts.camera} (seed {opts.seed})…")
    began = time.monotonic()
    await asyncio.to_thread(run_night, plan, raws=True)
    console.print(f"simulated in {time.monotonic() - began:.0f} s")
    return night


def _registered_text(counts: dict[str, int]) -> str:
    """What registering the night's products did, in words."""
    done = [
        f"{n} {what}" for what, n in counts.items() if n and what not in ("replaced", "refused")
    ]
    text = (
        "registered the night's products: " + ", ".join(done)
        if done
        else "the night's products were already registered"
    )
    if counts.get("replaced"):
        text += f" ({counts['replaced']} re-pointed at the night's files)"
    text += "; the processors read them through the registry"
    if counts.get("refused"):
        text += (
            f"; {counts['refused']} refused (unreadable or not what they should be; the reasons"
            " are logged, and a CCD that needs one fails with its reason)"
        )
    return text


def _tokens_file(out: Path) -> tuple[Path, str]:
    token = secrets.token_urlsafe(16)
    path = out / "tokens.toml"
    path.write_text(f'[tokens]\n"{token}" = "ocs"\n"{secrets.token_urlsafe(16)}" = "operator"\n')
    path.chmod(0o600)
    return path, token


async def run_replay(opts: ReplayOptions, console: Console | None = None) -> dict[str, Any]:
    """The whole replay; returns the summary (also written as JSON under ``out``).

    Raises only when it cannot start at all (another replay runs in ``out``, a bad
    configuration); anything that goes wrong after that ends in a summary that says so.
    """
    console = console or Console()

    def say(message: str) -> None:
        console.print(message, highlight=False)

    opts.check()
    try:
        writable_dir(opts.out)
    except OSError as e:
        raise ConfigurationError(f"--out {opts.out} is not a writable directory: {e}") from e
    base = load_system_config(opts.config)
    with session.claim(opts.out):
        return await _claimed(opts, base, console, say)


async def _claimed(
    opts: ReplayOptions, base: SystemConfig, console: Console, say: Callable[[str], None]
) -> dict[str, Any]:
    """The replay, with ``out`` held by this run (:func:`session.claim`)."""
    decision = session.decide(opts.out, opts.fingerprint(), opts.fresh)
    if opts.address is not None:  # before the previous replay is cleaned: a typo costs nothing
        await asyncio.to_thread(wait_reachable, opts.address, opts.startup_timeout)
    say(f"{MODE_TEXT[decision.mode]} ({decision.why})")
    embedded = not (opts.dsn or base.database.dsn)
    keep_postgres = embedded and decision.mode == "resume"
    await asyncio.to_thread(
        session.stop_leftovers, decision.previous, opts.out / "pg", keep_postgres, say
    )
    if decision.clean:
        session.clean(opts.out, say)
    run = session.begin(opts.out, opts.fingerprint())
    status = "failed"
    summary: dict[str, Any] = failure_summary("the replay did not finish")
    cluster: LocalCluster | None = None
    try:
        if opts.nodes > 1:
            # In this thread: Ray's node start-up installs signal handlers (nothing else runs yet).
            pool = night_system_config(base, dsn="", processors=opts.processors)
            cpus = cpus_by_role(pool.components)
            cluster = session.start_cluster(opts.nodes, cpus, say, opts.startup_timeout)
            base = by_role(base)
        summary = await _replay(opts, base, decision, console, cluster)
        status = "complete" if summary["complete"] else "incomplete"
    except Exception as e:  # noqa: BLE001 (a replay reports whatever failed, never a traceback)
        summary = _failed(opts, decision, e)
    except BaseException as e:  # interrupted (Ctrl-C, cancelled): say so, then stop
        status = "interrupted"
        summary = failure_summary(f"interrupted ({type(e).__name__})")
        summary.update(mode=decision.mode, why=decision.why)
        raise
    finally:
        if opts.address is None:
            shutdown_ray()
        if cluster is not None:
            await asyncio.to_thread(session.stop_cluster, cluster, say)
        left_behind = await asyncio.to_thread(session.reap, run, say)
        if left_behind:
            summary["leftProcesses"] = left_behind
        (opts.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        session.finish(opts.out, run, status)
    return summary


def _failed(opts: ReplayOptions, decision: session.Decision, error: Exception) -> dict[str, Any]:
    path = opts.out / "replay-error.log"
    path.write_text("".join(traceback.format_exception(error)))
    log.error("the replay failed: %s (traceback in %s)", error, path)
    summary = failure_summary(f"{type(error).__name__}: {error}")
    summary["errorLog"] = str(path)
    summary.update(mode=decision.mode, why=decision.why)
    return summary


async def _drop_schemas(dsn: str, config: SystemConfig, say: Any) -> None:
    """A clean replay on a server it does not own: drop the schemas its components use."""
    names = sorted(database_schemas(config))
    conn = await asyncpg.connect(dsn)
    try:
        for name in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()
    say(f"dropped the schemas of the previous replay: {', '.join(names)}")


async def _replay(
    opts: ReplayOptions,
    base: SystemConfig,
    decision: session.Decision,
    console: Console,
    cluster: LocalCluster | None = None,
) -> dict[str, Any]:
    def say(message: str) -> None:
        console.print(message, highlight=False)

    night = await prepare_night(opts, console)
    tokens, token = _tokens_file(opts.out)
    restarts: list[str] = []
    with postgres_dsn(
        opts.dsn or base.database.dsn,
        opts.out / "pg",
        start_timeout=opts.startup_timeout,
        on_restart=restarts.append,
    ) as dsn:
        await wait_for_database(
            dsn, opts.startup_timeout, starting=not (opts.dsn or base.database.dsn)
        )
        config = night_system_config(
            base,
            dsn=dsn,
            processors=opts.processors,
            data_dir=opts.out / "data",
            staging=opts.out / "staging",
        )
        config = config.model_copy(
            update={
                "gateway": config.gateway.model_copy(update={"tokens_file": tokens}),
                "startup_timeout": opts.startup_timeout,
            }
        )
        if decision.clean and (opts.dsn or base.database.dsn):
            await _drop_schemas(dsn, config, say)
        registered = await register_products(config, night)
        say(_registered_text(registered))
        pool = await connect_pool(
            dsn, min_size=1, max_size=2, what="replay records", stateless=True
        )
        try:
            reader = NightRecordReader(pool, config)
            try:
                outcome = await _run_system(config, opts, night, token, console, reader, cluster)
            except Exception as e:  # noqa: BLE001 (the night failed: count it, report it)
                summary = _failed(opts, decision, e)
                summary["recoveries"] = restarts
                await _failed_night(summary, pool, config, reader, night, opts.out)
                return summary
            outcome.progress.recoveries.extend(restarts)
            summary = await _summarize(pool, config, outcome, night, opts.out)
        finally:
            await pool.close()
    summary.update(mode=decision.mode, why=decision.why)
    if registered.get("refused"):
        summary["productsRefused"] = registered["refused"]
    return summary


async def _patiently(read: Callable[[], Awaitable[T]], patience: float = REPORT_PATIENCE) -> T:
    """``read()``, tried again while the database is away (the supervised embedded server
    restarting as the night ends) for up to ``patience`` seconds."""

    def retrying(e: BaseException) -> None:
        log.warning("the night's records cannot be read yet (%s); retrying", e)

    return await call_patiently(read, RetriableError, patience=patience, on_retry=retrying)


async def _failed_night(
    summary: dict[str, Any],
    pool: asyncpg.Pool,
    config: SystemConfig,
    reader: NightRecordReader,
    night: Path,
    out: Path,
) -> None:
    """Add to a failed night's summary what was recorded, and write its reports if it can."""
    try:
        source = open_night(night)
        visits = [v.visit_id for v in source.visits]
        record = await reader.read(visits)
        summary.update(record_counts(record, len(visits) * len(source.camera.detectors)))
        summary["visits"] = len(visits)
        records = await fetch_records(pool, config, visits)
        summary["reports"] = await write_reports(pool, config, records, visits, night, out)
    except (DmcsError, OSError, ValueError, asyncpg.PostgresError) as e:
        summary["reportsFailed"] = f"{type(e).__name__}: {e}"
    except Exception as e:
        # A fault in the reports must not take the place of the night's own failure cause.
        log.exception("the failed night's reports could not be written")
        summary["reportsFailed"] = f"{type(e).__name__}: {e}"


async def _summarize(
    pool: asyncpg.Pool, config: SystemConfig, outcome: ReplayOutcome, night: Path, out: Path
) -> dict[str, Any]:
    """The summary and the reports; a failure to write the reports is said, not raised."""
    try:
        records = await _patiently(lambda: fetch_records(pool, config, outcome.visits))
    except DmcsError as e:
        summary = night_summary(None, outcome)
        summary["reportsFailed"] = f"reading the records failed: {e}"
        return summary
    summary = night_summary(records, outcome)
    try:
        summary["reports"] = await _patiently(
            lambda: write_reports(
                pool, config, records, outcome.visits, night, out, outcome.node_losses
            )
        )
        summary["alertQuality"] = alert_headline(summary["reports"])
    except (DmcsError, OSError, ValueError, asyncpg.PostgresError) as e:
        summary["reportsFailed"] = f"{type(e).__name__}: {e}"
    return summary


async def _run_system(
    config: Any,
    opts: ReplayOptions,
    night: Path,
    token: str,
    console: Console,
    reader: NightRecordReader,
    cluster: LocalCluster | None = None,
) -> ReplayOutcome:
    def stalled(message: str) -> None:
        console.print(f"[yellow]{message}[/yellow]", highlight=False)

    address = cluster.address if cluster is not None else opts.address
    killer = None
    if cluster is not None and opts.kill_node_at is not None:
        visit_ids = [v.visit_id for v in open_night(night).visits]
        killer = NodeKiller(cluster, opts.kill_node_at, visit_ids)
    async with (
        serve(config, address=address, port=0) as running,
        Client(running.ws_url, token=token) as client,
    ):
        sigterm_cancels(asyncio.current_task())  # the main task: _replay is awaited inline
        console.print(f"dmcs is up: {running.http_url} (dashboard at {running.http_url}/)")
        placed: dict[str, str] = {}
        roles: dict[str, str] = {}
        if cluster is not None:
            placed = await asyncio.to_thread(placement_of, config.name)
            roles = cluster.roles
            console.print(_placed_text(cluster, placed), highlight=False)
        with ReplayDisplay(console, opts.progress) as display:
            on_drive = display.drive
            if killer is not None:
                killer.bus = running.system.bus

                def on_drive(p: DriveProgress) -> None:
                    display.drive(p)
                    killer.on_drive(p)

            def watch(watcher: NightWatcher) -> None:
                if killer is not None:
                    killer.progress = watcher.progress

            outcome = await replay_night(
                client,
                night,
                opts.out / "staging",
                speed=opts.speed,
                drain_seconds=opts.drain_seconds,
                on_drive=on_drive,
                on_change=display.pipeline,
                during=watch,
                read_record=reader.read,
                stall_seconds=opts.stall_seconds,
                on_stall=stalled,
                enable_timeout=opts.startup_timeout,  # the components' warm-up included
            )
        if killer is not None:
            outcome.node_losses = await killer.settle(outcome.progress)
        outcome.placement = placed
        outcome.node_roles = roles
        await client.set_system_state(State.STANDBY)
    return outcome


def _placed_text(cluster: LocalCluster, placed: dict[str, str]) -> str:
    """Which components run on which node, in words."""
    roles = cluster.roles
    by_node: dict[str, list[str]] = {}
    for name, node in sorted(placed.items()):
        by_node.setdefault(node, []).append(name)
    parts = [
        f"{node[:8]} ({roles.get(node, '?')}): {', '.join(names)}"
        for node, names in by_node.items()
    ]
    return f"a local {len(roles)}-node Ray cluster, placed by role; " + "; ".join(parts)


def by_role(config: SystemConfig) -> SystemConfig:
    """``config`` with placement by node role switched on."""
    placement = config.placement.model_copy(update={"by_role": True})
    return config.model_copy(update={"placement": placement})
