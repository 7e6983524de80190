"""``dmcs reprocess``: a data release or the daytime catch-up of a night, and its status.

dmcs reprocess --night 20250505 --release dr1 --release-id 1 --night-dir NIGHT --workers 2
dmcs reprocess --catch-up --night 20250505 --night-dir NIGHT --archive-dir ARCHIVE
dmcs reprocess status [RELEASE]

Raws, calibrations, templates and reference catalogues are read through the registry
(``--registry-schema``); ``--night-dir`` registers a simulated night's products there first
(idempotently), else they must already be registered (a replay or ``dmcs simulate register``).

With ``--url`` (a running gateway) and a token of a batch identity, the run's progress and
failures are also published as telemetry, which the operators' dashboard shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from base.db import connect_pool
from base.reprocess.observer import Observers, RunObserver
from commands.cli_options import gateway_url_callback, required_dsn
from config.system import DSN_ENV
from state.errors import DmcsError

console = Console()


class RateColumn(ProgressColumn):
    """Units per second since the phase began."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- /s" if speed is None else f"{speed:.2f} /s", style="cyan")


#: Seconds a run's telemetry may take to send its last messages once the run has ended.
TELEMETRY_FLUSH_S = 5.0
PHASE_LABELS = {"ccd": "CCDs", "region": "sky regions", "characterize": "variability"}


class ProgressBars(RunObserver):
    """A rich progress bar per phase, with rate and ETA."""

    def __init__(self, bars: Progress) -> None:
        self.bars = bars
        self.tasks: dict[str, Any] = {}

    def progress(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            label = PHASE_LABELS.get(phase, phase)
            self.tasks[phase] = self.bars.add_task(label, total=total)
        self.bars.update(self.tasks[phase], completed=done, total=total)

    def failure(self, unit: str, reason: str, attempt: int, final: bool) -> None:
        if final:
            self.bars.console.print(f"[red]failed[/red] {unit}: {reason}", markup=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def _fail(e: DmcsError) -> click.ClickException:
    return click.ClickException(f"{type(e).__name__}: {e}")


@click.group(invoke_without_command=True)
@click.option("--dsn", default=lambda: os.environ.get(DSN_ENV), help="PostgreSQL DSN.")
@click.option("--night", type=int, help="The night (dayObs) to reprocess; the first of a range.")
@click.option("--last-night", type=int, help="The last night (dayObs) of a range.")
@click.option(
    "--night-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A simulated night whose calibrations, templates and reference catalogue are "
    "registered first (default: they are already in the registry).",
)
@click.option("--release", help="Release name; outputs go to schema dr_<release>.")
@click.option("--release-id", type=int, help="Release number 1..31 in every id it mints.")
@click.option(
    "--catch-up",
    is_flag=True,
    help="Process the night's failed, abandoned and deferred prompt CCDs instead.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="CCDs processed at once.",
)
@click.option("--address", help="An existing Ray cluster (default: an embedded local Ray).")
@click.option("--local", is_flag=True, help="Run in this process (threads), without Ray.")
@click.option("--clobber", is_flag=True, help="Recompute the release from scratch.")
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Tries per CCD.",
)
@click.option("--registry-schema", default="registry", show_default=True)
@click.option("--apdb-schema", default="apdb", show_default=True, help="Prompt APDB (catch-up).")
@click.option("--records-schema", default="prompt", show_default=True)
@click.option("--archive-schema", default="alerts", show_default=True)
@click.option(
    "--archive-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The AlertPublisher's alert archive (catch-up).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--url",
    default=lambda: os.environ.get("DMCS_URL"),
    callback=gateway_url_callback,
    help="A running gateway (ws://host:port/ws) to publish progress to ($DMCS_URL).",
)
@click.option("--token", default=lambda: os.environ.get("DMCS_TOKEN"), help="Its token.")
@click.option(
    "--niceness",
    default=19,
    show_default=True,
    type=click.IntRange(0, 19),
    help="OS niceness of the batch work (driver and workers), to yield cores to prompt work.",
)
@click.pass_context
def reprocess(ctx: click.Context, **opts: Any) -> None:
    """Reprocess nights as a batch over Ray, exactly once and resumably."""
    ctx.obj = opts
    if ctx.invoked_subcommand is not None:
        return
    from state.priority import lower_priority

    lower_priority(opts["niceness"])
    if opts["night"] is None:
        raise click.UsageError("give --night")
    if opts["url"] is not None:
        from commands.reprocess_telemetry import http_base

        try:
            http_base(opts["url"])
        except ValueError as e:
            raise click.UsageError(f"--url: {e}") from e
    dsn = required_dsn(opts["dsn"])
    from base.reprocess.catchup import CatchUpConfig
    from base.reprocess.runner import ReprocessConfig

    if opts["catch_up"]:
        if opts["archive_dir"] is None:
            raise click.UsageError("--catch-up needs --archive-dir (the AlertPublisher's archive)")
        if opts["clobber"]:
            raise click.UsageError("--clobber is not allowed on the prompt products")
        job: Any = CatchUpConfig(
            dsn=dsn,
            night_dir=opts["night_dir"],
            day_obs=opts["night"],
            archive_dir=opts["archive_dir"],
            registry_schema=opts["registry_schema"],
            apdb_schema=opts["apdb_schema"],
            records_schema=opts["records_schema"],
            archive_schema=opts["archive_schema"],
            max_attempts=opts["max_attempts"],
        )
    else:
        if opts["release"] is None or opts["release_id"] is None:
            raise click.UsageError("give --release and --release-id (or --catch-up)")
        try:
            job = ReprocessConfig(
                dsn=dsn,
                night_dir=opts["night_dir"],
                release=opts["release"],
                release_id=opts["release_id"],
                first_night=opts["night"],
                last_night=opts["last_night"],
                registry_schema=opts["registry_schema"],
                max_attempts=opts["max_attempts"],
                clobber=opts["clobber"],
            )
        except DmcsError as e:
            raise _fail(e) from e
    try:
        summary = asyncio.run(_run(job, opts))
    except DmcsError as e:
        raise _fail(e) from e
    if opts["as_json"]:
        click.echo(json.dumps(summary, default=str))
    else:
        console.print_json(json.dumps(summary, default=str))
    if summary.get("failed"):
        raise SystemExit(1)


async def _run(job: Any, opts: dict[str, Any]) -> dict[str, Any]:
    from base.reprocess.catchup import CatchUpConfig, check_catch_up
    from base.reprocess.executor import Executor, InlineExecutor

    if isinstance(job, CatchUpConfig):
        await check_catch_up(job)  # before Ray: a night that is not there starts nothing
    started = False
    if opts["local"]:
        executor: Executor = InlineExecutor(opts["workers"])
    else:
        from actors.reprocess import RayExecutor, start_ray
        from actors.runtime import shutdown_ray

        started = start_ray(opts["address"], opts["workers"], opts["niceness"])
        executor = RayExecutor(opts["workers"], opts["niceness"])
    try:
        with _progress() as bars:
            observers: list[RunObserver] = [ProgressBars(bars)]
            if opts["url"] is None:
                return await _job(job, executor, Observers(observers))
            from commands.reprocess_telemetry import RunTelemetry

            telemetry = RunTelemetry(opts["url"], opts["token"])
            sender = asyncio.create_task(telemetry.run(), name="reprocess-telemetry")
            try:
                summary = await _job(job, executor, Observers([*observers, telemetry]))
            finally:
                # Also when interrupted: the run's last word ("interrupted") still goes out.
                await telemetry.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TELEMETRY_FLUSH_S):  # see state.waiting
                        await sender
            return {**summary, "telemetry": telemetry.stats()}
    finally:
        await executor.close()
        if started:
            shutdown_ray()


async def _job(job: Any, executor: Any, observer: RunObserver) -> dict[str, Any]:
    from base.reprocess.catchup import CatchUpConfig, catch_up
    from base.reprocess.runner import reprocess as run_release

    if isinstance(job, CatchUpConfig):
        return (await catch_up(job, executor, observer)).to_dict()
    return (await run_release(job, executor, observer)).to_dict()


@reprocess.command()
@click.argument("release", required=False)
@click.option("--dsn", default=None, help="PostgreSQL DSN (default: the group's).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: dict[str, Any], release: str | None, dsn: str | None, as_json: bool) -> None:
    """Releases and catch-ups in the ledger; with RELEASE, its units."""
    try:
        rows = asyncio.run(_status(required_dsn(dsn or obj.get("dsn")), release))
    except DmcsError as e:
        raise _fail(e) from e
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    if not rows:
        console.print("nothing in the ledger" if release is None else f"no units of {release}")
        return
    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


async def _status(dsn: str, release: str | None) -> list[dict[str, Any]]:
    from base.reprocess.ledger import Ledger

    pool = await connect_pool(dsn, min_size=1, max_size=2, what="reprocess status")
    try:
        ledger = await Ledger.connect(pool)
        if release is None:
            return await ledger.releases()
        return [u.__dict__ for u in await ledger.units(release)]
    finally:
        await pool.close()
