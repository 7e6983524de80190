"""``dmcs simulate``: simulated nights (registered in the main CLI by ``commands/cli.py``)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click

from commands.cli_options import gateway_url_callback, required_dsn
from config.system import DSN_ENV
from state.errors import DmcsError

DEFAULT_URL = "ws://127.0.0.1:8765/ws"


@click.group(name="simulate")
def simulate() -> None:
    """Simulate the sky, the camera and a night of observing."""


@simulate.command(name="night")
@click.option("--camera", default="comcam", show_default=True, help="camera configuration name")
@click.option("--visits", default=50, show_default=True, type=int, help="visits in the night")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="output dir")
@click.option(
    "--schedule",
    type=click.Path(path_type=Path),
    default=None,
    help="replay this OpSim SQLite instead of generating one (first --visits rows)",
)
@click.option("--night-mjd", default=60800, show_default=True, type=int)
@click.option("--calibs/--no-calibs", default=True, show_default=True)
@click.option("--templates/--no-templates", default=True, show_default=True)
@click.option(
    "--raws/--no-raws",
    default=False,
    show_default=True,
    help="also render every raw now (the night driver renders them otherwise)",
)
def night(
    camera: str,
    visits: int,
    seed: int,
    out: Path,
    schedule: Path | None,
    night_mjd: int,
    calibs: bool,
    templates: bool,
    raws: bool,
) -> None:
    """Write schedule, truth, calibrations and templates of a simulated night into OUT."""
    from summit.simulation import plan_night, run_night

    try:
        plan = plan_night(camera, visits, seed, out, schedule, night_mjd)
        manifest = run_night(
            plan,
            calibs=calibs,
            templates=templates,
            raws=raws,
            progress=lambda msg: click.echo(msg, err=True),
        )
    except DmcsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(manifest, indent=1))


@simulate.command(name="drive")
@click.option(
    "--night",
    "night_path",
    required=True,
    type=click.Path(path_type=Path),
    help="a night directory (dmcs simulate night --out) or an OpSim SQLite",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    help="time compression; 1 = real time",
)
@click.option("--visits", type=int, default=None, help="drive only the first N visits")
@click.option(
    "--staging",
    type=click.Path(path_type=Path),
    default=None,
    help=(
        "the camera's DAQ staging area (default: the running SummitBuffer's own, or"
        " NIGHT/staging without one; one outside the buffer's folders is refused)"
    ),
)
@click.option("--camera", default=None, help="camera of an OpSim file (default comcam)")
@click.option("--seed", type=int, default=None, help="sky seed of an OpSim file (default 1)")
@click.option(
    "--url",
    default=lambda: os.environ.get("DMCS_URL", DEFAULT_URL),
    show_default=DEFAULT_URL,
    callback=gateway_url_callback,
    help="Gateway WebSocket URL (default: $DMCS_URL).",
)
@click.option(
    "--token",
    default=lambda: os.environ.get("DMCS_TOKEN"),
    help="Bearer token of an OCS identity (default: $DMCS_TOKEN).",
)
def drive(
    night_path: Path,
    speed: float,
    visits: int | None,
    staging: Path | None,
    camera: str | None,
    seed: int | None,
    url: str,
    token: str | None,
) -> None:
    """Replay a night against a running system (dmcs run) as the OCS and the camera."""
    from commands.client import Client
    from commands.night_driver import (
        DriveProgress,
        NightDriver,
        buffer_raw_folders,
        staging_for_buffer,
    )
    from summit.night_files import open_night

    try:
        source = open_night(night_path, visits=visits, camera=camera, seed=seed)
    except DmcsError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e

    fallback = (night_path if night_path.is_dir() else night_path.parent) / "staging"

    def show(p: DriveProgress) -> None:
        if p.topic == "endReadout":
            click.echo(
                f"visit {p.visits_sent}/{p.visits_total}  events {p.events_sent}/"
                f"{p.events_total}  ccds {p.ccds_staged}  late {p.lateness_s:.3f} s",
                err=True,
            )

    async def go() -> dict[str, object]:
        async with Client(url, token=token, reconnect=False) as client:
            area = staging_for_buffer(staging, await buffer_raw_folders(client), fallback)
            driver = NightDriver(client, source, area, speed=speed, on_progress=show)
            return (await driver.run()).as_dict()

    try:
        summary = asyncio.run(go())
    except DmcsError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e
    click.echo(json.dumps(summary, indent=1))
    if not summary["ok"]:
        raise click.ClickException(f"{len(summary['problems'])} problem(s); see the summary")  # type: ignore[arg-type]


@simulate.command(name="register")
@click.argument("night_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--dsn",
    default=lambda: os.environ.get(DSN_ENV),
    help="PostgreSQL DSN of the system (default: $DMCS_DATABASE_DSN; `dmcs run` logs it).",
)
@click.option("--registry-schema", default="registry", show_default=True)
def register(night_dir: Path, dsn: str | None, registry_schema: str) -> None:
    """Register a simulated night's products (detectors, calibrations, templates, reference
    catalogue) in the registry, as a night needs before it is driven (idempotent)."""
    from base.registry.products import register_night
    from base.registry.repository import Repository

    dsn = required_dsn(dsn)

    async def go() -> dict[str, int]:
        repo = await Repository.connect(dsn, registry_schema)
        try:
            return await register_night(repo, night_dir)
        finally:
            await repo.close()

    try:
        added = asyncio.run(go())
    except DmcsError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e
    click.echo(json.dumps({"registered": added}))
