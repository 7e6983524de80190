"""The ``dmcs`` command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import structlog
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from commands.alerts_cli import alerts
from commands.cli_options import connection_options
from commands.client import Client
from commands.logs import configure_logging
from commands.reprocess_cli import reprocess
from commands.simulate_cli import simulate
from state.acks import Ack
from state.errors import AckError, DmcsError
from state.waiting import wait_event

console = Console()


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except AckError as e:
        raise click.ClickException(str(e)) from e
    except DmcsError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e


def _given_on_command_line(*names: str) -> frozenset[str]:
    """Which of the current command's options ``names`` its user typed (not defaults)."""
    ctx = click.get_current_context()
    return frozenset(n for n in names if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """dmcs: the data-management control system of a survey telescope."""
    from actors.ray_auth import use_local_token

    use_local_token()  # before anything imports Ray


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="System configuration TOML (default: the packaged one).",
)
@click.option("--address", help="Address of an existing Ray cluster (default: embedded Ray).")
@click.option("--port", type=int, help="Gateway port (default: from the configuration).")
@click.option(
    "--log-format", type=click.Choice(["console", "json"]), default="console", show_default=True
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0, min_open=True),
    help="Stop after this many seconds (default: run until interrupted).",
)
def run(
    config_path: Path | None,
    address: str | None,
    port: int | None,
    log_format: str,
    duration: float | None,
) -> None:
    """Start the components and the gateway in the foreground."""
    from commands.server import serve
    from commands.signals import stop_on_signals
    from config.system import load_system_config

    configure_logging(log_format)  # type: ignore[arg-type]
    log = structlog.get_logger("dmcs.run")
    config = _run_config(lambda p: load_system_config(p, gateway_port=port), config_path)

    async def main_loop() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        async with serve(config, address=address, port=port) as running:
            from actors.runtime import ray_address

            # Ray's start-up puts its own SIGTERM handler first, which prints a stack and
            # kills the process (no component stopped, nothing said): ours again, after it.
            stop_on_signals(stop)
            log.info(
                "dmcs running",
                gateway=running.ws_url,
                status=f"{running.http_url}/api/v1/status",
                components=list(running.system.components),
                ray=ray_address(),
                database=running.dsn or None,
                batch_slots=config.batch_slots,
            )
            if not await wait_event(stop, duration):
                log.info("duration reached; stopping", seconds=duration)
        log.info("dmcs stopped")

    _run(main_loop())


def _run_config(loader: Any, path: Path | None) -> Any:
    try:
        return loader(path)
    except DmcsError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(url: str, token: str | None, as_json: bool) -> None:
    """Show every component: state, heartbeat age, error code."""

    async def fetch() -> list[dict[str, Any]]:
        async with Client(url, token=token, reconnect=False) as client:
            return await client.status()

    rows = _run(fetch())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"dmcs components at {url}")
    for column in ("component", "state", "heartbeat age", "lost", "error", "version", "config"):
        table.add_column(column)
    for row in rows:
        age = row["heartbeatAge"]
        age_text = "never" if age is None else f"{age:.1f} s" + (" STALE" if row["stale"] else "")
        error = f"{row['errorCode']} {row['errorReport']}".strip() if row["errorCode"] else ""
        table.add_row(
            row["name"],
            _state_markup(row["summaryState"]),
            age_text,
            str(row["lostHeartbeats"]),
            error,
            row["version"],
            row["configuration"],
        )
    console.print(table)


_STATE_STYLE = {"ENABLED": "green", "DISABLED": "yellow", "STANDBY": "yellow", "FAULT": "bold red"}


def _state_markup(state: str) -> str:
    style = _STATE_STYLE.get(state, "dim")
    return f"[{style}]{state}[/{style}]"


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses (numbers, true/false, lists), else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


@main.command()
@connection_options
@click.argument("component")
@click.argument("name")
@click.argument("params", nargs=-1)
@click.option("--timeout", type=float, default=30.0, show_default=True)
def command(
    url: str, token: str | None, component: str, name: str, params: tuple[str, ...], timeout: float
) -> None:
    """Send COMPONENT the command NAME with key=value parameters; print its acks."""
    values = dict(parse_param(p) for p in params)

    def show(ack: Ack) -> None:
        line = f"{ack.code.name} ({int(ack.code)})"
        if ack.timeout:
            line += f" remaining {ack.timeout:.1f} s"
        if ack.result:
            line += f": {ack.result}"
        console.print(line, style="green" if ack.code.is_good else "red", highlight=False)

    async def send() -> None:
        async with Client(url, token=token, reconnect=False) as client:
            await client.command(component, name, timeout=timeout, on_ack=show, **values)

    _run(send())


@main.command()
@connection_options
@click.argument("target", type=click.Choice(["enabled", "disabled", "standby", "offline"]))
@click.option("--component", "components", multiple=True, help="Only this component (repeat).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
def system(
    url: str, token: str | None, target: str, components: tuple[str, ...], timeout: float
) -> None:
    """Walk every component (or the named ones) to TARGET state at once."""

    async def walk() -> dict[str, Any]:
        async with Client(url, token=token, reconnect=False) as client:
            return await client.set_system_state(target, components or None, timeout=timeout)

    for name, state in _run(walk()).items():
        console.print(f"{name}: {_state_markup(state.name)}")


@main.command()
@click.option("--camera", default="mini", show_default=True, help="Focal plane to simulate.")
@click.option(
    "--visits", type=int, default=4, show_default=True, help="Visits in the night to simulate."
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--speed", type=float, default=10.0, show_default=True, help="1 = real time.")
@click.option("--processors", type=int, default=2, show_default=True, help="CCD processors.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("var/replay"), show_default=True
)
@click.option("--night", type=click.Path(path_type=Path), help="An already simulated night.")
@click.option("--opsim", type=click.Path(path_type=Path), help="Replay an OpSim SQLite schedule.")
@click.option("--dsn", help="PostgreSQL DSN (default: an embedded server under --out).")
@click.option("--address", help="Address of an existing Ray cluster (default: embedded Ray).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="System file.")
@click.option("--drain", type=float, default=300.0, show_default=True,
              help="Seconds the pipeline may take after the last readout.")  # fmt: skip
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@click.option(
    "--fresh", is_flag=True, help="Start clean even if the previous replay in --out can resume."
)
@click.option(
    "--stall",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Seconds without progress before saying what the night waits for.",
)
@click.option(
    "--startup-timeout",
    type=click.FloatRange(min=1.0),
    default=120.0,
    show_default=True,
    help="Seconds to wait for PostgreSQL, Ray and the components.",
)
@click.option(
    "--nodes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Ray nodes on this machine: >1 starts a local cluster placed by role (head: summit).",
)
@click.option(
    "--kill-node-at",
    type=click.IntRange(min=1),
    default=None,
    help="Kill a base node when this visit (1-based) starts (needs --nodes 3 or more).",
)
def replay(
    camera: str,
    visits: int,
    seed: int,
    speed: float,
    processors: int,
    out: Path,
    night: Path | None,
    opsim: Path | None,
    dsn: str | None,
    address: str | None,
    config_path: Path | None,
    drain: float,
    no_progress: bool,
    fresh: bool,
    stall: float,
    startup_timeout: float,
    nodes: int,
    kill_node_at: int | None,
) -> None:
    """Replay a simulated night through the whole system; print the summary and reports.

    In a directory that holds an earlier replay, it replays the night again from a clean
    state if that one completed (or with --fresh), else resumes it; it says which. The exit
    status is 0 only if the night completed.
    """
    from commands.replay.main import run_replay
    from commands.replay.options import ReplayOptions
    from commands.replay.report_cli import print_summary

    configure_logging("console")
    options = ReplayOptions(
        out=out, camera=camera, visits=visits, seed=seed, speed=speed, night=night, opsim=opsim,
        processors=processors, dsn=dsn, address=address, config=config_path,
        drain_seconds=drain, progress=not no_progress, fresh=fresh, stall_seconds=stall,
        startup_timeout=startup_timeout, nodes=nodes, kill_node_at=kill_node_at,
        given=_given_on_command_line("camera", "visits", "seed"),
    )  # fmt: skip
    try:
        summary = _run(run_replay(options, console))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (its main task)
        console.print(
            f"interrupted; the same command resumes the night in {out} "
            f"(what happened so far: {out / 'summary.json'})",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(130) from None
    print_summary(summary, console)
    if not summary["complete"]:
        raise click.ClickException("the night did not complete; see the summary above")


@main.command()
@connection_options
@click.option("--component", "components", multiple=True, help="Only this component (repeat).")
@click.option("--topic", "topics", multiple=True, help="Only this topic (repeat).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(
    url: str,
    token: str | None,
    components: tuple[str, ...],
    topics: tuple[str, ...],
    count: int | None,
    as_json: bool,
) -> None:
    """Tail events and telemetry (the latest of each topic first)."""

    async def tail() -> None:
        seen = 0
        async with Client(url, token=token) as client:
            async for event in client.subscribe(components or None, topics or None):
                if as_json:
                    click.echo(json.dumps(event.to_wire()))
                else:
                    console.print(
                        f"[bold]{event.component}[/bold].{event.topic} "
                        f"#{event.seq} {json.dumps(event.data)}",
                        highlight=False,
                    )
                seen += 1
                if count is not None and seen >= count:
                    return

    _run(tail())


main.add_command(simulate)
main.add_command(alerts)
main.add_command(reprocess)


if __name__ == "__main__":
    main()
