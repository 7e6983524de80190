"""SQLite opened for durability: a row is on disk before the call that wrote it returns."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from state.errors import StorageError


def open_durable(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """Open (creating) ``path`` in WAL mode with ``synchronous=FULL`` and apply ``schema``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot open the {what} {path}: {e}") from e
    return db


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
