"""SQLite opened for durability: a row is on disk before the call that wrote it returns.

Each store is versioned as the PostgreSQL ones are (``base.db``): its migrations are frozen
SQL scripts applied once each, in order; ``PRAGMA user_version`` records how many were
applied and ``PRAGMA application_id`` which store the file is. At open, a file of another
store or of a newer schema version than the code's raises ``IncompatibleDatabaseError``. A
file written before stores were versioned (both pragmas 0) is adopted: its scripts are all
``IF NOT EXISTS``, so migration 1 leaves its tables as they are.

Calls block on fsync; an asyncio caller runs them off the event loop (:class:`SqliteThread`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from state.errors import IncompatibleDatabaseError, StorageError

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class SqliteStore:
    """A SQLite store: its name, its ``application_id`` and its frozen migration scripts."""

    name: str
    application_id: int
    migrations: tuple[str, ...]

    @property
    def latest(self) -> int:
        return len(self.migrations)


def open_durable(path: Path, store: SqliteStore) -> sqlite3.Connection:
    """Open (creating) ``path`` in WAL mode with ``synchronous=FULL``, check it is ``store`` at a
    schema version this code knows, and apply the pending migrations."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot open the {store.name} {path}: {e}") from e
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        _migrate(db, path, store)
    except sqlite3.Error as e:
        db.close()
        raise StorageError(f"cannot open the {store.name} {path}: {e}") from e
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection, path: Path, store: SqliteStore) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        app = int(db.execute("PRAGMA application_id").fetchone()[0])
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        where = str(path)
        if app not in (0, store.application_id) or (app == 0 and version != 0):
            raise IncompatibleDatabaseError(
                store.name, where, "application_id", app, store.application_id,
                "the file is another store's (or not a dmcs store); give this store its own path",
            )  # fmt: skip
        if version > store.latest:
            raise IncompatibleDatabaseError(
                store.name, where, "schema_version", version, store.latest,
                "the file was written by newer code; use that code, or a fresh path",
            )  # fmt: skip
        for number in range(version + 1, store.latest + 1):
            for statement in _statements(store.migrations[number - 1]):
                db.execute(statement)
        db.execute(f"PRAGMA application_id = {int(store.application_id)}")
        db.execute(f"PRAGMA user_version = {int(store.latest)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """The statements of a migration script (one transaction: no executescript, which commits)."""
    out, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return [s for s in out if s != ";"]


def version(db: sqlite3.Connection) -> tuple[int, int]:
    """``(application_id, user_version)`` of an open store."""
    return (
        int(db.execute("PRAGMA application_id").fetchone()[0]),
        int(db.execute("PRAGMA user_version").fetchone()[0]),
    )


def write(db: sqlite3.Connection, sql: str, args: tuple[Any, ...], what: str) -> sqlite3.Cursor:
    try:
        return db.execute(sql, args)
    except sqlite3.Error as e:
        raise StorageError(f"{what} write failed: {e}") from e


def read(db: sqlite3.Connection, sql: str, args: tuple[Any, ...], what: str) -> list[Any]:
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error as e:
        raise StorageError(f"{what} read failed: {e}") from e


class SqliteThread:
    """One thread that runs a store's blocking SQLite calls for asyncio callers, in call order.

    One thread per store: calls are serialized as on the event loop before, and an fsync never
    blocks the loop.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
