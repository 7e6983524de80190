"""The one asyncpg pool factory of dmcs."""

from __future__ import annotations

import re

import asyncpg

from .errors import mapped_errors


def redacted_dsn(dsn: str) -> str:
    """``dsn`` without its password (in the user part or a ``password=`` parameter)."""
    head, at, tail = dsn.rpartition("@")
    if at and ":" in head.split("//", 1)[-1]:
        scheme, _, user = head.partition("//")
        dsn = f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", dsn)


async def connect_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    search_path: str | None = None,
    what: str = "database",
    stateless: bool = False,
) -> asyncpg.Pool:
    """A pool on ``dsn``; an unreachable server raises ``DatabaseUnavailableError``.

    ``search_path`` puts one schema first for unqualified names (the caller's own schema).
    ``stateless``: the pool's users leave no session state on a connection (no session
    advisory lock, LISTEN, cursor or SET outside a transaction), so a released connection is
    not reset on the server: asyncpg's reset is a round trip after every query. An open
    transaction is still rolled back on release.
    """
    settings = {"search_path": search_path} if search_path else None
    async with mapped_errors(f"{what}: connecting to {redacted_dsn(dsn)}"):
        return await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, server_settings=settings,
            reset=_keep_session if stateless else None,
        )  # fmt: skip


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The reset of a stateless pool: nothing beyond asyncpg's own rollback."""
