"""Ingest's own durable ledger (SQLite, WAL, synchronous=FULL) of what reached the base.

A raw is confirmed to the summit only after its file is on base storage and its row is here
(``received``); it becomes ``registered`` once PostgreSQL holds it. After a crash or a
database outage ingest resumes from the ``received`` rows, so nothing confirmed is lost and a
re-delivered raw is recognised without asking PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from state.durable_sqlite import SqliteStore, open_durable, write

#: Frozen migrations: append, never edit a released one.
STORE = SqliteStore(
    "ingest ledger",
    0x646D4C47,  # "dmLG"
    (
        """
CREATE TABLE IF NOT EXISTS received (
    visit INTEGER NOT NULL,
    detector INTEGER NOT NULL,
    image_name TEXT NOT NULL,
    camera TEXT NOT NULL,
    checksum TEXT NOT NULL,
    file_checksum TEXT NOT NULL,
    byte_size INTEGER NOT NULL,
    path TEXT NOT NULL,
    end_readout_tai REAL NOT NULL,
    received_tai REAL NOT NULL,
    header_merged INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (visit, detector)
);
CREATE TABLE IF NOT EXISTS headers (
    image_name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    checksum TEXT NOT NULL
);
""",
    ),
)
_COLUMNS = (
    "visit, detector, image_name, camera, checksum, file_checksum, byte_size, path,"
    " end_readout_tai,"
    " received_tai, header_merged, state"
)


@dataclass(frozen=True, slots=True)
class Received:
    visit: int
    detector: int
    image_name: str
    camera: str
    checksum: str
    file_checksum: str
    byte_size: int
    path: str
    end_readout_tai: float
    received_tai: float
    header_merged: bool
    state: str


class Ledger:
    def __init__(self, path: Path) -> None:
        self._what = f"ingest ledger {path}"
        self._db = open_durable(path, STORE)
        self.path = path

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        write(self._db, sql, args, self._what)

    def find(self, visit: int, detector: int) -> Received | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM received WHERE visit = ? AND detector = ?", (visit, detector)
        ).fetchone()
        return None if row is None else _received(row)

    def add(self, r: Received) -> None:
        self._write(
            f"INSERT INTO received ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.visit,
                r.detector,
                r.image_name,
                r.camera,
                r.checksum,
                r.file_checksum,
                r.byte_size,
                r.path,
                r.end_readout_tai,
                r.received_tai,
                int(r.header_merged),
                r.state,
            ),
        )

    def update(
        self, visit: int, detector: int, *, state: str, header_merged: bool, file_checksum: str
    ) -> None:
        self._write(
            "UPDATE received SET state = ?, header_merged = ?, file_checksum = ?"
            " WHERE visit = ? AND detector = ?",
            (state, int(header_merged), file_checksum, visit, detector),
        )

    def pending(self) -> list[Received]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM received WHERE state = 'received' ORDER BY received_tai"
        ).fetchall()
        return [_received(r) for r in rows]

    def add_header(self, image_name: str, url: str, checksum: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO headers (image_name, url, checksum) VALUES (?,?,?)",
            (image_name, url, checksum),
        )

    def header(self, image_name: str) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT url, checksum FROM headers WHERE image_name = ?", (image_name,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))


def _received(row: tuple[object, ...]) -> Received:
    values = list(row)
    values[10] = bool(values[10])
    return Received(*values)  # type: ignore[arg-type]
