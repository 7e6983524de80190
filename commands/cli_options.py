"""Options shared by the ``dmcs`` commands: the gateway's (``--url``, ``--token``) and the
database DSN that commands working on PostgreSQL directly require."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import click

from config.system import check_dsn
from state.errors import ConfigurationError

DEFAULT_URL = "ws://127.0.0.1:8765/ws"


def check_gateway_url(url: str) -> str:
    """``url`` if it can name a gateway (``ws``/``wss``/``http``/``https``, a host, a port in
    range); ValueError saying why not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a gateway URL: {url!r} ({e})") from e
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise ValueError(f"not a gateway URL: {url!r} (expected ws://HOST:PORT/ws)")
    if port == 0:
        raise ValueError(f"not a gateway URL: {url!r} (port 0)")
    return url


def gateway_url_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """click callback of every ``--url``: a usage error, before anything connects."""
    if value is None:
        return None
    try:
        return check_gateway_url(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


def connection_options(f: Any) -> Any:
    """``--url`` and ``--token``, defaulting to ``$DMCS_URL`` and ``$DMCS_TOKEN``."""
    f = click.option(
        "--token",
        default=lambda: os.environ.get("DMCS_TOKEN"),
        help="Bearer token (default: $DMCS_TOKEN); watching needs none.",
    )(f)
    return click.option(
        "--url",
        default=lambda: os.environ.get("DMCS_URL", DEFAULT_URL),
        show_default=DEFAULT_URL,
        callback=gateway_url_callback,
        help="Gateway WebSocket URL (default: $DMCS_URL).",
    )(f)


def required_dsn(dsn: str | None) -> str:
    """``--dsn`` (or ``$DMCS_DATABASE_DSN``), checked by ``config.system.check_dsn``; a usage
    error when it is missing or cannot name a server."""
    if not dsn:
        raise click.UsageError("give --dsn (or set $DMCS_DATABASE_DSN)")
    try:
        return check_dsn(dsn)
    except ConfigurationError as e:
        raise click.UsageError(f"--dsn: {e}") from e
