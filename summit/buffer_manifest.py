"""The summit buffer's manifest: a write-ahead record of every raw it holds (SQLite, WAL).

Every change is committed with ``synchronous=FULL`` before the buffer acts on it, so after a
crash the manifest says exactly which raws were accepted, which are still unsent and which
the base has confirmed. A row walks ``receiving`` → ``buffered`` → ``transferred`` →
``deleted``; acquisition order is the order rows were created (``seq``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from state.durable_sqlite import SqliteStore, open_durable, write

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


class Manifest:
    def __init__(self, path: Path) -> None:
        self._what = f"buffer manifest {path}"
        self._db = open_durable(path, STORE)
        self.path = path

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        return write(self._db, sql, args, self._what)

    def _select(self, where: str, args: tuple[object, ...] = ()) -> list[Entry]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE {where}", args)
        return [Entry(*row) for row in rows.fetchall()]

    def find(self, visit: int, detector: int) -> Entry | None:
        found = self._select("visit = ? AND detector = ?", (visit, detector))
        return found[0] if found else None

    def begin(
        self,
        *,
        image_name: str,
        visit: int,
        detector: int,
        camera: str,
        checksum: str,
        byte_size: int,
        path: str,
        url: str,
        end_readout_tai: float,
        received_tai: float,
    ) -> Entry:
        """Record that a raw is being received (before its file is written)."""
        self._write(
            "INSERT INTO images (image_name, visit, detector, camera, checksum, byte_size, path,"
            " url, end_readout_tai, received_tai, state) VALUES (?,?,?,?,?,?,?,?,?,?,'receiving')",
            (
                image_name,
                visit,
                detector,
                camera,
                checksum,
                byte_size,
                path,
                url,
                end_readout_tai,
                received_tai,
            ),
        )
        entry = self.find(visit, detector)
        assert entry is not None
        return entry

    def set_state(self, seq: int, state: str, transferred_tai: float | None = None) -> None:
        if transferred_tai is None:
            self._write("UPDATE images SET state = ? WHERE seq = ?", (state, seq))
        else:
            self._write(
                "UPDATE images SET state = ?, transferred_tai = ? WHERE seq = ?",
                (state, transferred_tai, seq),
            )

    def count_attempt(self, seq: int) -> None:
        self._write("UPDATE images SET attempts = attempts + 1 WHERE seq = ?", (seq,))

    def remove(self, seq: int) -> None:
        self._write("DELETE FROM images WHERE seq = ?", (seq,))

    def in_state(self, state: str) -> list[Entry]:
        """Rows in ``state``, in acquisition order."""
        return self._select("state = ? ORDER BY seq", (state,))

    def retained(self) -> list[Entry]:
        """Confirmed raws still on disk, oldest confirmation first."""
        return self._select("state = 'transferred' ORDER BY transferred_tai, seq")

    def totals(self) -> dict[str, tuple[int, int]]:
        """State → (count, bytes)."""
        rows = self._db.execute(
            "SELECT state, COUNT(*), COALESCE(SUM(byte_size), 0) FROM images GROUP BY state"
        ).fetchall()
        return {state: (int(n), int(size)) for state, n, size in rows}
