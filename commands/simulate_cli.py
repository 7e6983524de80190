"""``dmcs simulate``: simulated nights (registered in the main CLI by ``commands/cli.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from state.errors import DmcsError


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
