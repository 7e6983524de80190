"""``dmcs replay`` end to end: simulate, start PostgreSQL + Ray + gateway, drive, report.

Everything runs on this machine by default: an embedded PostgreSQL in ``<out>/pg``, an
embedded Ray, the gateway on a free loopback port, the real client. ``--dsn`` and
``--address`` point it at an existing database or cluster instead.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console

from base.postgres import postgres_dsn
from base.registry.products import register_night
from base.registry.repository import Repository
from commands.client import Client
from commands.replay.display import ReplayDisplay
from commands.replay.night_system import night_system_config
from commands.replay.runner import ReplayOutcome, replay_night
from commands.replay.summary import alert_headline, fetch_records, night_summary, write_reports
from commands.server import serve
from config.system import load_system_config
from state.errors import ConfigurationError
from state.states import State
from summit.simulation import plan_night, run_night


@dataclass(frozen=True)
class ReplayOptions:
    out: Path = Path("var/replay")
    camera: str = "mini"
    visits: int = 4
    seed: int = 1
    speed: float = 10.0
    night: Path | None = None
    opsim: Path | None = None
    processors: int = 2
    dsn: str | None = None
    address: str | None = None
    config: Path | None = None
    drain_seconds: float = 300.0
    progress: bool = True


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
        if not (opts.night / "manifest.json").is_file():
            raise ConfigurationError(f"{opts.night} is not a simulated night (no manifest.json)")
        return opts.night
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


def _tokens_file(out: Path) -> tuple[Path, str]:
    token = secrets.token_urlsafe(16)
    path = out / "tokens.toml"
    path.write_text(f'[tokens]\n"{token}" = "ocs"\n"{secrets.token_urlsafe(16)}" = "operator"\n')
    path.chmod(0o600)
    return path, token


async def run_replay(opts: ReplayOptions, console: Console | None = None) -> dict[str, Any]:
    """The whole replay; returns the summary (also written as JSON under ``out``)."""
    console = console or Console()
    opts.out.mkdir(parents=True, exist_ok=True)
    night = await prepare_night(opts, console)
    tokens, token = _tokens_file(opts.out)
    base = load_system_config(opts.config)
    with postgres_dsn(opts.dsn or base.database.dsn, opts.out / "pg") as dsn:
        config = night_system_config(
            base, dsn=dsn, night_dir=night, processors=opts.processors, data_dir=opts.out / "data"
        )
        config = config.model_copy(
            update={"gateway": config.gateway.model_copy(update={"tokens_file": tokens})}
        )
        repo = await Repository.connect(dsn)
        try:
            registered = await register_night(repo, night)
        finally:
            await repo.close()
        console.print(f"registered the night's products: {registered}")
        outcome = await _run_system(config, opts, night, token, console)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            records = await fetch_records(pool, config, outcome.visits)
            summary = night_summary(records, outcome)
            summary["reports"] = await write_reports(
                pool, config, records, outcome, night, opts.out
            )
            summary["alertQuality"] = alert_headline(summary["reports"])
        finally:
            await pool.close()
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


async def _run_system(
    config: Any, opts: ReplayOptions, night: Path, token: str, console: Console
) -> ReplayOutcome:
    async with (
        serve(config, address=opts.address, port=0) as running,
        Client(running.ws_url, token=token) as client,
    ):
        console.print(f"dmcs is up: {running.http_url} (dashboard at {running.http_url}/)")
        with ReplayDisplay(console, opts.progress) as display:
            outcome = await replay_night(
                client,
                night,
                opts.out / "staging",
                speed=opts.speed,
                drain_seconds=opts.drain_seconds,
                on_drive=display.drive,
                on_change=display.pipeline,
            )
        await client.set_system_state(State.STANDBY)
    return outcome
