"""The summit buffer's manifest: a write-ahead record of every raw it holds (SQLite, WAL).

Every change is committed with ``synchronous=FULL`` before the buffer acts on it, so after a
crash the manifest says exactly which raws were accepted, which are still unsent and which
the base has confirmed. A row walks ``receiving`` → ``buffered`` → ``transferred`` →
``deleted``; acquisition order is the order rows were created (``seq``).

Its calls block on fsync: the buffer runs them on the manifest's own thread
(``state.durable_sqlite.SqliteThread``), never on its event loop. What the loop reads for
alarms and telemetry is :attr:`Manifest.figures`, a snapshot the writes keep current.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from state.durable_sqlite import SqliteStore, open_durable, read, write
from state.errors import BufferFullError, StorageError

#: Frozen migrations: append, never edit a released one.
STORE = SqliteStore(
    "buffer manifest",
    0x646D4D46,  # "dmMF"
    (
        """
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    image_name TEXT NOT NULL,
    visit INTEGER NOT NULL,
    detector INTEGER NOT NULL,
    camera TEXT NOT NULL,
    checksum TEXT NOT NULL,
    byte_size INTEGER NOT NULL,
    path TEXT NOT NULL,
    url TEXT NOT NULL,
    end_readout_tai REAL NOT NULL,
    received_tai REAL NOT NULL,
    state TEXT NOT NULL,
    transferred_tai REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (visit, detector)
);
CREATE INDEX IF NOT EXISTS images_state ON images (state, seq);
""",
    ),
)

_COLUMNS = (
    "seq, image_name, visit, detector, camera, checksum, byte_size, path, url, "
    "end_readout_tai, received_tai, state, transferred_tai, attempts"
)


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    image_name: str
    visit: int
    detector: int
    camera: str
    checksum: str
    byte_size: int
    path: str
    url: str
    end_readout_tai: float
    received_tai: float
    state: str
    transferred_tai: float | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Figures:
    """The manifest's totals as of its last write: state → (count, bytes), and when the oldest
    unsent (``buffered``) raw was received."""

    totals: dict[str, tuple[int, int]] = field(default_factory=dict)
    oldest_unsent_tai: float | None = None

    def of(self, state: str) -> tuple[int, int]:
        return self.totals.get(state, (0, 0))


@dataclass(frozen=True, slots=True)
class Row:
    """A raw about to be received: the manifest row :meth:`Manifest.reserve` inserts."""

    image_name: str
    visit: int
    detector: int
    camera: str
    checksum: str
    byte_size: int
    path: str
    url: str
    end_readout_tai: float
    received_tai: float


class Manifest:
    """The manifest's SQLite file. Not for an event loop: every call may wait on fsync."""

    def __init__(self, path: Path) -> None:
        self._what = f"buffer manifest {path}"
        self._db = open_durable(path, STORE)
        self.path = path
        self.figures = self._measure()

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        write(self._db, "BEGIN IMMEDIATE", (), self._what)
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        write(self._db, "COMMIT", (), self._what)

    def _write(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        return write(self._db, sql, args, self._what)

    def _select(self, where: str, args: tuple[object, ...] = ()) -> list[Entry]:
        rows = read(self._db, f"SELECT {_COLUMNS} FROM images WHERE {where}", args, self._what)
        return [Entry(*row) for row in rows]

    def _measure(self) -> Figures:
        rows = read(
            self._db,
            "SELECT state, COUNT(*), COALESCE(SUM(byte_size), 0) FROM images GROUP BY state",
            (),
            self._what,
        )
        totals = {str(state): (int(n), int(size)) for state, n, size in rows}
        return Figures(totals, self._oldest_unsent())

    def _oldest_unsent(self) -> float | None:
        rows = read(
            self._db,
            "SELECT received_tai FROM images WHERE state = 'buffered' ORDER BY seq LIMIT 1",
            (),
            self._what,
        )
        return float(rows[0][0]) if rows else None

    def _moved(self, changes: list[tuple[int, str | None, str | None]]) -> None:
        """Publish the figures after committed row changes: (bytes, old state, new state)."""
        totals = dict(self.figures.totals)
        oldest = self.figures.oldest_unsent_tai
        for size, old, new in changes:
            for state, sign in ((old, -1), (new, 1)):
                if state is not None:
                    n, b = totals.get(state, (0, 0))
                    totals[state] = (n + sign, b + sign * size)
        if any("buffered" in (old, new) for _, old, new in changes):
            oldest = self._oldest_unsent()
        self.figures = Figures({k: v for k, v in totals.items() if v[0]}, oldest)

    def find(self, visit: int, detector: int) -> Entry | None:
        found = self._select("visit = ? AND detector = ?", (visit, detector))
        return found[0] if found else None

    def reserve(self, row: Row, capacity: int) -> Entry:
        """Record that a raw is being received (before its file is written), in one transaction
        with the room it takes: retained raws are dropped oldest first until it fits.

        Returns the raw's row, which may be one already there (the caller compares it).
        Raises ``BufferFullError`` (the raws dropped so far stay dropped) or ``StorageError``.
        """
        changes: list[tuple[int, str | None, str | None]] = []
        seq = None
        with self._transaction():
            existing = self.find(row.visit, row.detector)
            if existing is not None:
                return existing
            used = sum(self.figures.of(s)[1] for s in ("receiving", "buffered", "transferred"))
            if used + row.byte_size > capacity:
                for entry in self._select("state = 'transferred' ORDER BY transferred_tai, seq"):
                    Path(entry.path).unlink(missing_ok=True)
                    self._write("UPDATE images SET state = 'deleted' WHERE seq = ?", (entry.seq,))
                    changes.append((entry.byte_size, "transferred", "deleted"))
                    used -= entry.byte_size
                    if used + row.byte_size <= capacity:
                        break
            if used + row.byte_size <= capacity:
                cur = self._write(
                    "INSERT INTO images (image_name, visit, detector, camera, checksum, byte_size,"
                    " path, url, end_readout_tai, received_tai, state)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,'receiving')",
                    (
                        row.image_name, row.visit, row.detector, row.camera, row.checksum,
                        row.byte_size, row.path, row.url, row.end_readout_tai, row.received_tai,
                    ),
                )  # fmt: skip
                seq = cur.lastrowid
                changes.append((row.byte_size, None, "receiving"))
        self._moved(changes)
        if seq is None:
            unsent = self.figures.of("receiving")[0] + self.figures.of("buffered")[0]
            raise BufferFullError(
                f"summit buffer full: {used:,} of {capacity:,} bytes used by {unsent} unsent "
                f"raws; {row.image_name} detector {row.detector} ({row.byte_size:,} bytes) "
                "refused"
            )
        return self._select("seq = ?", (seq,))[0]

    def set_state(
        self,
        seq: int,
        state: str,
        transferred_tai: float | None = None,
        *,
        attempted: bool = False,
    ) -> None:
        """Move row ``seq`` to ``state``; ``attempted`` also counts a send attempt."""
        with self._transaction():
            found = read(
                self._db, "SELECT state, byte_size FROM images WHERE seq = ?", (seq,), self._what
            )
            if not found:
                raise StorageError(f"{self._what}: no row {seq} to mark {state}")
            old, size = str(found[0][0]), int(found[0][1])
            self._write(
                "UPDATE images SET state = ?, transferred_tai = COALESCE(?, transferred_tai),"
                " attempts = attempts + ? WHERE seq = ?",
                (state, transferred_tai, int(attempted), seq),
            )
        self._moved([(size, old, state)])

    def delete(self, entry: Entry) -> None:
        """Drop a raw: its file, then its row marked ``deleted``."""
        Path(entry.path).unlink(missing_ok=True)
        self.set_state(entry.seq, "deleted")

    def expire(self, cutoff: float) -> int:
        """Delete the retained raws confirmed at or before ``cutoff``; how many."""
        expired = [
            e
            for e in self.retained()
            if e.transferred_tai is not None and e.transferred_tai <= cutoff
        ]
        for entry in expired:
            self.delete(entry)
        return len(expired)

    def count_attempt(self, seq: int) -> None:
        self._write("UPDATE images SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    def remove(self, seq: int) -> None:
        with self._transaction():
            found = read(
                self._db, "SELECT state, byte_size FROM images WHERE seq = ?", (seq,), self._what
            )
            self._write("DELETE FROM images WHERE seq = ?", (seq,))
        if found:
            self._moved([(int(found[0][1]), str(found[0][0]), None)])

    def in_state(self, state: str) -> list[Entry]:
        """Rows in ``state``, in acquisition order."""
        return self._select("state = ? ORDER BY seq", (state,))

    def newest(self, state: str) -> Entry | None:
        """The most recently acquired row in ``state``."""
        found = self._select("state = ? ORDER BY seq DESC LIMIT 1", (state,))
        return found[0] if found else None

    def retained(self) -> list[Entry]:
        """Confirmed raws still on disk, oldest confirmation first."""
        return self._select("state = 'transferred' ORDER BY transferred_tai, seq")

    def totals(self) -> dict[str, tuple[int, int]]:
        """State → (count, bytes), as of the last write (no query)."""
        return dict(self.figures.totals)
