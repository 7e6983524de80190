"""Options shared by the ``dmcs`` commands: the gateway's (``--url``, ``--token``) and the
database DSN that commands working on PostgreSQL directly require."""

from __future__ import annotations

import os
from typing import Any

import click

from config.system import check_dsn
from state.errors import ConfigurationError

DEFAULT_URL = "ws://127.0.0.1:8765/ws"


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
