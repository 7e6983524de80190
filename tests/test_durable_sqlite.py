"""The SQLite stores are versioned: a file of a newer schema or of another store is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from base.ingest_ledger import STORE as LEDGER_STORE
from base.ingest_ledger import Ledger
from base.prompt.work_queue import STORE as WORK_STORE
from base.prompt.work_queue import WorkQueue
from state.durable_sqlite import SqliteStore, SqliteThread, open_durable, version
from state.errors import IncompatibleDatabaseError
from summit.buffer_manifest import STORE as MANIFEST_STORE
from summit.buffer_manifest import Manifest

TOY = SqliteStore(
    "toy",
    0x746F7921,
    (
        "CREATE TABLE IF NOT EXISTS t (a INTEGER PRIMARY KEY);",
        "ALTER TABLE t ADD COLUMN b TEXT; CREATE INDEX t_b ON t (b);",
    ),
)


def _schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_opening_twice_changes_nothing_and_records_the_version(tmp_path: Path) -> None:
    path = tmp_path / "toy.sqlite"
    open_durable(path, TOY).close()
    before = _schema(path)
    db = open_durable(path, TOY)
    assert version(db) == (TOY.application_id, 2)
    db.close()
    assert _schema(path) == before


def test_an_older_file_is_migrated_in_order(tmp_path: Path) -> None:
    path = tmp_path / "toy.sqlite"
    db = open_durable(path, dataclasses.replace(TOY, migrations=TOY.migrations[:1]))
    db.execute("INSERT INTO t (a) VALUES (1)")
    db.close()
    db = open_durable(path, TOY)
    assert version(db) == (TOY.application_id, 2)
    assert db.execute("SELECT a, b FROM t").fetchall() == [(1, None)]
    db.close()


@pytest.mark.parametrize("store", [LEDGER_STORE, MANIFEST_STORE, WORK_STORE], ids=lambda s: s.name)
def test_a_newer_file_is_refused_and_left_as_it_is(tmp_path: Path, store: SqliteStore) -> None:
    path = tmp_path / "store.sqlite"
    open_durable(path, store).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {store.latest + 1}")
    with pytest.raises(IncompatibleDatabaseError) as info:
        open_durable(path, store)
    e = info.value
    assert (e.store, e.key, e.recorded, e.expected) == (
        store.name, "schema_version", store.latest + 1, store.latest,
    )  # fmt: skip
    assert f"{store.name} store in {path}: recorded schema_version" in str(e)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == store.latest + 1


def test_another_stores_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.sqlite"
    Manifest(path).close()
    with pytest.raises(IncompatibleDatabaseError, match="recorded application_id"):
        Ledger(path)
    with pytest.raises(IncompatibleDatabaseError, match="work queue store"):
        WorkQueue(path)


def test_a_file_of_earlier_dmcs_without_versions_is_adopted(tmp_path: Path) -> None:
    """Files written before stores were versioned (both pragmas 0) keep their rows."""
    path = tmp_path / "work.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(WORK_STORE.migrations[0])
        db.execute("INSERT INTO work (visit, detector, state, updated) VALUES (7, 1, 'queued', 0)")
    q = WorkQueue(path)
    try:
        assert q.counts() == {"queued": 1}
    finally:
        q.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == WORK_STORE.latest


async def test_the_sqlite_thread_keeps_calls_off_the_event_loop_and_in_order() -> None:
    worker = SqliteThread("test")
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []
    try:
        await asyncio.gather(
            *(worker.run(lambda i=i: seen.append((i, threading.get_ident()))) for i in range(20))
        )
    finally:
        worker.close()
    assert [i for i, _ in seen] == list(range(20))
    assert {t for _, t in seen} != {loop_thread} and len({t for _, t in seen}) == 1
