"""``dmcs alerts get ID`` and ``dmcs alerts stream``: the alert archive and stream from a shell."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import click

from base.alerts import decode
from commands.alert_client import STREAM_PATH, AlertSubscription
from commands.cli_options import connection_options
from state.durable import writable_dir
from state.errors import DmcsError, InvalidInputError


def base_url(url: str, websocket: bool = False) -> str:
    """``scheme://host:port`` of the gateway from its WebSocket URL (``ws://h:p/ws``)."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    scheme = {(True, True): "wss", (True, False): "ws", (False, True): "https"}.get(
        (websocket, secure), "http"
    )
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def _headers(token: str | None) -> dict[str, str]:
    if not token:
        raise click.ClickException("alerts need a token (--token or $DMCS_TOKEN)")
    return {"Authorization": f"Bearer {token}"}


def summary(alert: dict[str, Any]) -> dict[str, Any]:
    """The few fields a person reads first."""
    src = alert["diaSource"]
    return {
        "diaSourceId": alert["diaSourceId"],
        "visit": src["visit"],
        "detector": src["detector"],
        "ra": src["ra"],
        "dec": src["dec"],
        "band": src.get("band"),
        "psfFlux": src.get("psfFlux"),
        "snr": src.get("snr"),
        "diaObjectId": (alert.get("diaObject") or {}).get("diaObjectId"),
        "prvDiaSources": len(alert.get("prvDiaSources") or ()),
    }


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except aiohttp.WSServerHandshakeError as e:
        if e.status in (401, 403):
            raise click.ClickException(f"the gateway refused the token (HTTP {e.status})") from e
        raise click.ClickException(f"the gateway refused the stream: HTTP {e.status}") from e
    except (aiohttp.ClientError, OSError) as e:
        raise click.ClickException(f"cannot reach the gateway: {e}") from e
    except DmcsError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from e


def _writable(folder: Path, option: str) -> None:
    """A usage error, before the gateway is asked, when ``folder`` cannot be written."""
    try:
        writable_dir(folder)
    except OSError as e:
        raise click.BadParameter(
            f"{folder} is not a writable folder: {e}", param_hint=option
        ) from e


@click.group()
def alerts() -> None:
    """Fetch archived alerts and follow the alert stream."""


@alerts.command("get")
@connection_options
@click.argument("dia_source_id", type=int)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Save the packet.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole alert (cutouts omitted).")
def get(url: str, token: str | None, dia_source_id: int, out: Path | None, as_json: bool) -> None:
    """Fetch one archived alert by its diaSourceId."""
    if out is not None:
        _writable(out.parent, "--out")

    async def fetch() -> bytes:
        async with (
            aiohttp.ClientSession(headers=_headers(token)) as session,
            session.get(f"{base_url(url)}/api/v1/alerts/{dia_source_id}") as response,
        ):
            if response.status != 200:
                raise click.ClickException(f"HTTP {response.status}: {await response.text()}")
            return await response.read()

    packet = _run(fetch())
    if out is not None:
        out.write_bytes(packet)
    alert = decode(packet)
    if as_json:
        for name in ("cutoutDifference", "cutoutScience", "cutoutTemplate"):
            alert[name] = None if alert[name] is None else f"<{len(alert[name])} bytes of FITS>"
        click.echo(json.dumps(alert, indent=2))
    else:
        click.echo(json.dumps(summary(alert)))


@alerts.command("stream")
@connection_options
@click.option("--filter", "filter_name", help="A predefined filter by name.")
@click.option("--expression", help="A filter in the filter language (quote it).")
@click.option("--full", is_flag=True, help="The whole stream (broker identities only).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many alerts.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Save packets here.")
@click.option(
    "--from",
    "after",
    type=click.IntRange(min=0),
    help="Resume after this batch position (the last 'batch' line printed on stderr).",
)
def stream(
    url: str,
    token: str | None,
    filter_name: str | None,
    expression: str | None,
    full: bool,
    count: int | None,
    out: Path | None,
    after: int | None,
) -> None:
    """Follow the alert stream: one JSON line per alert on stdout; the gateway's other frames
    (``subscribed``, one ``batch`` line with its position per batch) on stderr. A lost
    connection is resumed from the last batch position, with no alert twice."""
    chosen = [x for x in (filter_name, expression, full or None) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --filter, --expression, --full")
    if out is not None:
        _writable(out, "--out")

    async def follow() -> None:
        seen = 0
        async with aiohttp.ClientSession(headers=_headers(token)) as session:
            subscription = AlertSubscription(
                session, f"{base_url(url, websocket=True)}{STREAM_PATH}", full=full,
                filter=filter_name, expression=expression, after=after,
                on_frame=lambda frame: click.echo(json.dumps(frame), err=True),
            )  # fmt: skip
            try:
                async with subscription:
                    click.echo(json.dumps(subscription.subscribed), err=True)
                    async for packet in subscription:
                        alert = decode(packet)
                        if out is not None:
                            (out / f"{alert['diaSourceId']}.avro").write_bytes(packet)
                        click.echo(json.dumps(summary(alert)))
                        seen += 1
                        if count is not None and seen >= count:
                            return
            except InvalidInputError as e:
                raise click.ClickException(str(e)) from e

    _run(follow())
