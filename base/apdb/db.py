"""asyncpg plumbing shared by the APDB and the alert archive: error mapping, migrations, COPY rows.

Errors (all chained with ``raise ... from e``):

* connection refused/lost, too many connections, server shutting down
  -> :class:`DatabaseUnavailableError` (a ``ConnectionLostError``, retriable);
* serialization failure, deadlock -> :class:`TransactionConflictError` (retriable);
* any other database error -> ``StorageError`` (not retriable).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import numpy as np

from state.errors import ConnectionLostError, RetriableError, StorageError

from .schema import Table, q


class DatabaseUnavailableError(ConnectionLostError):
    """The database cannot be reached now (down, restarting, or out of connections)."""


class TransactionConflictError(RetriableError):
    """A transaction lost a serialization conflict or deadlock; retrying it is safe."""


_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    # A connection left mid-operation (a query cancelled by a timeout, a server gone).
    asyncpg.InternalClientError,
)
_CONFLICT = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)


@contextlib.asynccontextmanager
async def mapped_errors(what: str) -> AsyncIterator[None]:
    """Translate asyncpg/OS errors raised inside the block into dmcs errors."""
    try:
        yield
    except _CONFLICT as e:
        raise TransactionConflictError(f"{what}: {e}") from e
    except _UNAVAILABLE as e:
        raise DatabaseUnavailableError(f"{what}: database unavailable: {e}") from e
    except asyncpg.PostgresError as e:
        raise StorageError(f"{what}: {type(e).__name__}: {e}") from e


Migration = Callable[[asyncpg.Connection, str], Awaitable[None]]


async def migrate(
    conn: asyncpg.Connection, schema: str, component: str, migrations: Sequence[Migration]
) -> int:
    """Apply the migrations of ``component`` not yet recorded in ``schema.schema_version``.

    Migration ``k`` (1-based) runs in its own transaction with its version row, under an
    advisory lock, so concurrent starters apply each migration exactly once.
    """
    async with conn.transaction():
        # IF NOT EXISTS is not safe against a concurrent creator; the lock makes it so.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{schema}.schema")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q(schema)}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q(schema)}.schema_version ("
            " component text NOT NULL, version integer NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
        )
    for version, step in enumerate(migrations, start=1):
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"{schema}.{component}"
            )
            done = await conn.fetchval(
                f"SELECT 1 FROM {q(schema)}.schema_version WHERE component = $1 AND version = $2",
                component,
                version,
            )
            if done:
                continue
            await step(conn, schema)
            await conn.execute(
                f"INSERT INTO {q(schema)}.schema_version (component, version) VALUES ($1, $2)",
                component,
                version,
            )
    return len(migrations)


def _as_list(values: np.ndarray, kind: str) -> list[Any]:
    if kind == "float":
        arr = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            obj = arr.astype(object)
            obj[bad] = None
            return obj.tolist()
        return arr.tolist()
    if kind == "str":
        return [None if v is None or v == "" else str(v) for v in np.asarray(values).tolist()]
    return np.asarray(values).tolist()


def records(
    table: Table, cols: dict[str, np.ndarray], n: int, fill: dict[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """COPY-ready rows: the schema columns present in ``cols`` (or ``fill``), NaN/'' -> NULL.

    Missing NOT NULL integer columns (Ndata counters, bboxSize) default to 0; a missing NOT NULL
    column of another kind is an error.
    """
    fill = fill or {}
    names: list[str] = []
    lists: list[list[Any]] = []
    for c in table.columns:
        if c.name in cols:
            values = np.asarray(cols[c.name])
            if len(values) != n:
                raise ValueError(f"{table.name}.{c.name} has {len(values)} rows, expected {n}")
            lists.append(_as_list(values, c.kind))
        elif c.name in fill:
            lists.append([fill[c.name]] * n)
        elif not c.nullable and c.kind == "int":
            lists.append([0] * n)
        elif not c.nullable:
            raise ValueError(f"{table.name}.{c.name} is required (NOT NULL) and was not given")
        else:
            continue
        names.append(c.name)
    return names, list(zip(*lists, strict=True)) if n else []


def columns_from_row(table: Table, row: asyncpg.Record | None) -> dict[str, np.ndarray]:
    """Decode one row of ``array_agg`` columns (see ``select_columns_sql``) into numpy arrays."""
    out: dict[str, np.ndarray] = {}
    for i, c in enumerate(table.columns):
        values = row[i] if row is not None else None
        if values is None:
            values = []
        if c.kind == "str":
            out[c.name] = np.array(values, dtype=object)
        else:
            out[c.name] = np.asarray(values, dtype=c.np_type)
    return out
