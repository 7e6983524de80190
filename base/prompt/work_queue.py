"""A CCD processor's durable list of work: what it was told to do survives an actor restart.

SQLite in WAL mode with synchronous=FULL: a row is on disk before the event that created it
is considered handled. States: ``queued`` → ``running`` → ``done`` | ``failed`` |
``abandoned`` | ``deferred`` (left to the daytime catch-up by the overload policy,
:mod:`base.prompt.overload`); in a pool that schedules by availability, ``elsewhere``:
another processor holds the CCD's claim (:mod:`base.prompt_records.claims`), queued again if
that claim expires. After a crash, :meth:`recover` puts ``running`` work back in the queue
with its attempt count kept, so the retry limit still holds. A list that cannot be read or written
raises :class:`~state.errors.StorageError`; SQLite keeps such a connection broken, so a repaired
file is used only after :meth:`reopen`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state.durable_sqlite import SqliteStore, open_durable, read, write

FINAL_STATES = ("done", "failed", "abandoned", "deferred")
#: Claimed by another processor of the pool: not this one's to do unless requeued.
ELSEWHERE = "elsewhere"

#: Frozen migrations: append, never edit a released one.
STORE = SqliteStore(
    "work queue",
    0x646D574C,  # "dmWL"
    (
        """
CREATE TABLE IF NOT EXISTS visits (
    visit INTEGER PRIMARY KEY, info TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS work (
    visit INTEGER NOT NULL, detector INTEGER NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL, PRIMARY KEY (visit, detector));
CREATE INDEX IF NOT EXISTS work_state ON work (state, visit, detector);
""",
        # When the CCD was listed (its imageIngested): its age for the overload policy, which
        # a requeue (``updated``) does not reset.
        """
ALTER TABLE work ADD COLUMN ingested REAL;
""",
    ),
)


@dataclass(frozen=True)
class WorkItem:
    visit: int
    detector: int
    state: str
    attempts: int
    reason: str


class WorkQueue:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_durable(path, STORE)
        #: The owner calls from its SQLite thread; a reader (a test, telemetry) may call too.
        self._lock = threading.Lock()

    def reopen(self) -> None:
        """Open the file afresh (after it was repaired or replaced); the old connection closes."""
        db = open_durable(self.path, STORE)
        old, self._db = self._db, db
        old.close()

    def _write(self, sql: str, *args: Any) -> int:
        with self._lock:
            return write(self._db, sql, args, "work queue").rowcount

    def _read(self, sql: str, *args: Any) -> list[Any]:
        with self._lock:
            return read(self._db, sql, args, "work queue")

    def remember_visit(self, visit: int, info: dict[str, Any]) -> None:
        self._write(
            "INSERT OR REPLACE INTO visits (visit, info, received) VALUES (?, ?, ?)",
            visit,
            json.dumps(info),
            time.time(),
        )

    def visit_info(self, visit: int) -> dict[str, Any] | None:
        rows = self._read("SELECT info FROM visits WHERE visit = ?", visit)
        return json.loads(rows[0][0]) if rows else None

    def first_visit(self) -> int | None:
        """The earliest visit this processor has heard of (None: none yet)."""
        rows = self._read("SELECT min(visit) FROM visits")
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def enqueue(self, visit: int, detector: int) -> bool:
        """Add work once; False when (visit, detector) is already known in any state."""
        now = time.time()
        return (
            self._write(
                "INSERT OR IGNORE INTO work (visit, detector, state, updated, ingested)"
                " VALUES (?, ?, 'queued', ?, ?)",
                visit,
                detector,
                now,
                now,
            )
            == 1
        )

    def next(self) -> WorkItem | None:
        """The oldest queued work (visits in time order, then detector)."""
        rows = self._read(
            "SELECT visit, detector, state, attempts, reason FROM work WHERE state = 'queued'"
            " ORDER BY visit, detector LIMIT 1"
        )
        return WorkItem(*rows[0]) if rows else None

    def queued(self) -> list[tuple[WorkItem, float]]:
        """All queued work, oldest visit first, each with the time it was (re)queued."""
        return [(item, queued_at) for item, queued_at, _ in self.pending()]

    def pending(self) -> list[tuple[WorkItem, float, float]]:
        """All queued work, oldest visit first, each with the time it was (re)queued and the
        time it was first listed (ingested)."""
        rows = self._read(
            "SELECT visit, detector, state, attempts, reason, updated,"
            " coalesce(ingested, updated) FROM work"
            " WHERE state = 'queued' ORDER BY visit, detector"
        )
        return [(WorkItem(*row[:5]), float(row[5]), float(row[6])) for row in rows]

    def requeue(self, visit: int, detector: int) -> bool:
        """Queue work whose holder in the pool is gone (or that was never heard of), as
        queued since time 0: takeable at once. False when it is running or finished here."""
        return (
            self._write(
                "INSERT INTO work (visit, detector, state, reason, updated, ingested)"
                " VALUES (?, ?, 'queued', 'claim expired', ?, ?)"
                " ON CONFLICT (visit, detector) DO UPDATE SET state = 'queued',"
                " reason = 'claim expired', updated = excluded.updated"
                f" WHERE state IN ('queued', '{ELSEWHERE}')",
                visit,
                detector,
                0.0,
                time.time(),
            )
            == 1
        )

    def start(self, item: WorkItem) -> WorkItem:
        self._write(
            "UPDATE work SET state = 'running', attempts = attempts + 1, updated = ?"
            " WHERE visit = ? AND detector = ?",
            time.time(),
            item.visit,
            item.detector,
        )
        return WorkItem(item.visit, item.detector, "running", item.attempts + 1, item.reason)

    def finish(self, item: WorkItem, state: str, reason: str = "") -> None:
        if state not in (*FINAL_STATES, "queued", ELSEWHERE):
            raise ValueError(f"unknown work state {state!r}")
        self._write(
            "UPDATE work SET state = ?, reason = ?, updated = ? WHERE visit = ? AND detector = ?",
            state,
            reason,
            time.time(),
            item.visit,
            item.detector,
        )

    def recover(self) -> list[WorkItem]:
        """Requeue the work that was running when the process died; returns it."""
        rows = self._read(
            "SELECT visit, detector, state, attempts, reason FROM work WHERE state = 'running'"
        )
        self._write(
            "UPDATE work SET state = 'queued', reason = 'interrupted', updated = ?"
            " WHERE state = 'running'",
            time.time(),
        )
        return [WorkItem(*row) for row in rows]

    def state_of(self, visit: int, detector: int) -> str | None:
        rows = self._read(
            "SELECT state FROM work WHERE visit = ? AND detector = ?", visit, detector
        )
        return str(rows[0][0]) if rows else None

    def known(self, visit: int, detector: int) -> bool:
        return bool(
            self._read("SELECT 1 FROM work WHERE visit = ? AND detector = ?", visit, detector)
        )

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, count(*) FROM work GROUP BY state")
        return {state: int(n) for state, n in rows}

    def close(self) -> None:
        self._db.close()
