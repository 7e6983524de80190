"""Options shared by the ``dmcs`` commands that talk to a running gateway."""

from __future__ import annotations

import os
from typing import Any

import click

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
