"""The alert archive (DMS-REQ-0094): Avro object-container files per night, indexed in PostgreSQL.

Each night has one container file ``alerts-<night>.avro`` (standard Avro: header with the
alert schema, codec ``null``, then blocks). A (visit, detector) batch is appended as one block
built from the *already serialized* alert bodies, so archiving re-encodes nothing and the
archive holds byte-for-byte what the stream sent. With the null codec a record's bytes are
contiguous, so the index keeps (file, offset, length) per diaSourceId and a fetch is one seek.

Order of a write: append + fsync the block, then in one transaction insert the index rows and
the (visit, detector) ledger row. A batch whose ledger row exists is skipped, so a retry adds
nothing; a crash between the two steps leaves unindexed bytes that a retry supersedes.

Each ledger row has a ``position`` (an identity column): the stream's resume cursor. Writers
take a transaction-level advisory lock before they claim a position, so positions commit in
the order they are drawn: whatever a reader sees of the ledger is a prefix in position order,
and a reader that read up to position P never later finds a batch below P it did not see
(positions may skip numbers: a claim that conflicts or rolls back draws one too).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import fastavro
import numpy as np

from base.db import Migration, Store, connect_pool, mapped_errors, migrate, q
from state.errors import InvalidInputError, StorageError

from .batch import split_packets
from .packet import unframe
from .schema import AlertSchema, latest_schema

_MAGIC = b"Obj\x01"
_META_SCHEMA = fastavro.parse_schema({"type": "map", "values": "bytes"})
#: What fastavro raises on bytes that are not what the schema says.
_DECODE_ERRORS = (EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError)


def _zigzag(n: int) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    return buf.getvalue()


#: The archive's index; frozen DDL: append, never edit a released step.
STORE = Store(
    "alert_archive",
    (
        Migration(
            1,
            "index and batch ledger",
            """
CREATE TABLE IF NOT EXISTS {schema}.alert_archive_index (
    "diaSourceId" bigint PRIMARY KEY, night integer NOT NULL, file text NOT NULL,
    byte_offset bigint NOT NULL, length integer NOT NULL, visit bigint NOT NULL,
    detector integer NOT NULL, schema_id integer NOT NULL);
CREATE TABLE IF NOT EXISTS {schema}.alert_archive_batch (
    visit bigint NOT NULL, detector integer NOT NULL, night integer NOT NULL,
    n_alerts integer NOT NULL, archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (visit, detector));
""",
        ),
        Migration(
            2,
            "batch positions (the stream's resume cursor)",
            """
ALTER TABLE {schema}.alert_archive_batch
    ADD COLUMN IF NOT EXISTS position bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX IF NOT EXISTS alert_archive_batch_position
    ON {schema}.alert_archive_batch (position);
CREATE INDEX IF NOT EXISTS alert_archive_index_batch
    ON {schema}.alert_archive_index (visit, detector);
""",
        ),
    ),
)


def night_file(root: Path, night: int) -> Path:
    """The container file of ``night`` in the archive at ``root``."""
    return root / f"alerts-{night}.avro"


@dataclass(frozen=True)
class ArchivedBatch:
    """One archived (visit, detector) batch read back in stream order."""

    position: int
    night: int
    visit: int
    detector: int
    ids: np.ndarray  # int64 diaSourceId per packet, in the order they were streamed
    offsets: np.ndarray  # int64, n + 1, into data
    data: np.ndarray  # uint8: the framed packets back to back, as the stream sent them

    def packets(self) -> list[memoryview]:
        return split_packets(self.data, self.offsets)


class AlertArchive:
    """Append alerts to nightly container files and fetch them back by diaSourceId."""

    def __init__(self, pool: asyncpg.Pool, schema: str, root: Path, alert_schema: AlertSchema):
        self._pool = pool
        self.schema = schema
        self.root = root
        self.alert_schema = alert_schema
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, dsn: str, root: Path, schema: str = "alerts", alert_schema: AlertSchema | None = None
    ) -> AlertArchive:
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        pool = await connect_pool(dsn, min_size=1, max_size=2, what="alert archive", stateless=True)
        try:
            async with mapped_errors("alert archive open"), pool.acquire() as conn:
                await migrate(conn, schema, STORE)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, schema, root, alert_schema or latest_schema())

    async def close(self) -> None:
        await self._pool.close()

    def path(self, night: int) -> Path:
        return night_file(self.root, night)

    def _header(self) -> tuple[bytes, bytes]:
        sync = os.urandom(16)
        meta = io.BytesIO()
        fastavro.schemaless_writer(
            meta,
            _META_SCHEMA,
            {
                "avro.schema": json.dumps(self.alert_schema.definition).encode(),
                "avro.codec": b"null",
            },
        )
        return _MAGIC + meta.getvalue() + sync, sync

    def _append(self, night: int, bodies: Sequence[bytes]) -> list[int]:
        """Append one block; return each record's byte offset. Runs in a worker thread."""
        path = self.path(night)
        try:
            with open(path, "a+b") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    header, sync = self._header()
                    f.write(header)
                else:
                    sync = self._sync_marker(f, path)
                    f.seek(0, os.SEEK_END)
                size = sum(len(b) for b in bodies)
                prefix = _zigzag(len(bodies)) + _zigzag(size)
                start = f.tell() + len(prefix)
                offsets = np.concatenate([[0], np.cumsum([len(b) for b in bodies])[:-1]]) + start
                f.write(prefix + b"".join(bodies) + sync)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise StorageError(f"cannot append to the alert archive {path}: {e}") from e
        return [int(o) for o in offsets]

    @staticmethod
    def _sync_marker(f: BinaryIO, path: Path) -> bytes:
        """The sync marker of an existing container file; StorageError if it is not one."""
        f.seek(0)
        if f.read(4) != _MAGIC:
            raise StorageError(f"{path} is not an Avro container file (bad magic)")
        try:
            fastavro.schemaless_reader(f, _META_SCHEMA, None)
        except _DECODE_ERRORS as e:
            raise StorageError(f"{path}: unreadable Avro header: {type(e).__name__}: {e}") from e
        sync = f.read(16)
        if len(sync) != 16:
            raise StorageError(f"{path}: cannot read the Avro sync marker")
        return sync

    async def archive(
        self, night: int, visit: int, detector: int, ids: Sequence[int], packets: Sequence[bytes]
    ) -> int | None:
        """Archive one (visit, detector) batch of framed alerts: its position, or None if it
        was archived already (or is empty)."""
        if len(ids) != len(packets):
            raise InvalidInputError(f"{len(ids)} ids for {len(packets)} packets")
        if not packets:
            return None
        framed = [unframe(p) for p in packets]
        schema_ids = {sid for sid, _ in framed}
        if schema_ids != {self.alert_schema.schema_id}:
            raise InvalidInputError(f"alerts carry schema ids {sorted(schema_ids)}")
        bodies = [body for _, body in framed]
        tname = f"{q(self.schema)}.alert_archive_batch"
        async with mapped_errors("alert archive"), self._pool.acquire() as conn:
            done = await conn.fetchval(
                f"SELECT 1 FROM {tname} WHERE visit = $1 AND detector = $2", visit, detector
            )
            if done:
                return None
            async with self._lock:
                offsets = await asyncio.to_thread(self._append, night, bodies)
            rows = [
                (int(i), night, self.path(night).name, off, len(b), visit, detector,
                 self.alert_schema.schema_id)
                for i, off, b in zip(ids, offsets, bodies, strict=True)
            ]  # fmt: skip
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))",
                    f"dmcs:alert-positions:{self.schema}",
                )
                position = await conn.fetchval(
                    f"INSERT INTO {tname} (visit, detector, night, n_alerts) VALUES ($1,$2,$3,$4)"
                    " ON CONFLICT DO NOTHING RETURNING position",
                    visit, detector, night, len(rows),
                )  # fmt: skip
                if position is None:
                    return None
                await conn.copy_records_to_table(
                    "alert_archive_index",
                    schema_name=self.schema,
                    records=rows,
                    columns=["diaSourceId", "night", "file", "byte_offset", "length", "visit",
                             "detector", "schema_id"],
                )  # fmt: skip
        return int(position)

    async def positions(self) -> tuple[int, int]:
        """(oldest, newest) position in the ledger; (0, 0) while it is empty."""
        async with mapped_errors("alert archive positions"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT coalesce(min(position), 0) AS oldest, coalesce(max(position), 0) AS newest"
                f" FROM {q(self.schema)}.alert_archive_batch"
            )
        return int(row["oldest"]), int(row["newest"])

    async def visit_at(self, position: int) -> int | None:
        """The visit of the batch at ``position`` (None: no batch there)."""
        async with mapped_errors("alert archive positions"), self._pool.acquire() as conn:
            visit = await conn.fetchval(
                f"SELECT visit FROM {q(self.schema)}.alert_archive_batch WHERE position = $1",
                position,
            )
        return None if visit is None else int(visit)

    async def batches_after(
        self,
        position: int,
        max_batches: int = 16,
        max_bytes: int = 64 << 20,
        visit: int | None = None,
        upto: int | None = None,
    ) -> list[ArchivedBatch]:
        """The archived batches with a position above ``position``, oldest first: at most
        ``max_batches``, and no more than ``max_bytes`` of packets unless one batch is larger;
        with ``visit`` and ``upto``, only that visit's batches at or below ``upto``."""
        if max_batches < 1:
            raise InvalidInputError("max_batches must be at least 1")
        s = q(self.schema)
        only = "" if visit is None else " AND visit = $3 AND position <= $4"
        args = () if visit is None else (visit, upto if upto is not None else position)
        async with mapped_errors("alert archive replay"), self._pool.acquire() as conn:
            ledger = await conn.fetch(
                f"SELECT position, visit, detector, night FROM {s}.alert_archive_batch"
                f" WHERE position > $1{only} ORDER BY position LIMIT $2",
                position, max_batches, *args,
            )  # fmt: skip
            if not ledger:
                return []
            index = await conn.fetch(
                f'SELECT visit, detector, "diaSourceId", file, byte_offset, length, schema_id'
                f" FROM {s}.alert_archive_index i JOIN unnest($1::bigint[], $2::int[]) AS b(v, d)"
                " ON i.visit = b.v AND i.detector = b.d ORDER BY visit, detector, byte_offset",
                [r["visit"] for r in ledger], [r["detector"] for r in ledger],
            )  # fmt: skip
        rows: dict[tuple[int, int], list[asyncpg.Record]] = {}
        for r in index:
            rows.setdefault((r["visit"], r["detector"]), []).append(r)
        out: list[ArchivedBatch] = []
        size = 0
        for entry in ledger:
            records = rows.get((entry["visit"], entry["detector"]), [])
            size += sum(5 + r["length"] for r in records)
            if out and size > max_bytes:
                break
            out.append(await asyncio.to_thread(self._read_batch, entry, records))
        return out

    def _read_batch(self, entry: asyncpg.Record, records: list[asyncpg.Record]) -> ArchivedBatch:
        """One batch's framed packets: its records are one contiguous block, read at once."""
        ids = np.array([r["diaSourceId"] for r in records], dtype=np.int64)
        lengths = np.array([r["length"] + 5 for r in records], dtype=np.int64)
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.zeros(int(offsets[-1]), dtype=np.uint8)
        if records:
            first, last = records[0], records[-1]
            files = {r["file"] for r in records}
            if len(files) != 1:
                raise StorageError(f"batch {entry['visit']}/{entry['detector']} spans {files}")
            start = int(first["byte_offset"])
            block = self._read(
                self.root / first["file"], start, int(last["byte_offset"] + last["length"]) - start
            )
            for r, at in zip(records, offsets[:-1].tolist(), strict=True):
                a = int(r["byte_offset"]) - start
                data[at] = 0
                data[at + 1 : at + 5] = np.frombuffer(
                    int(r["schema_id"]).to_bytes(4, "big"), np.uint8
                )
                data[at + 5 : at + 5 + r["length"]] = np.frombuffer(block, np.uint8, r["length"], a)
        return ArchivedBatch(
            int(entry["position"]), int(entry["night"]), int(entry["visit"]),
            int(entry["detector"]), ids, offsets, data,
        )  # fmt: skip

    async def fetch_packet(self, dia_source_id: int) -> bytes | None:
        """The framed alert of ``dia_source_id`` as it was streamed, or None if not archived."""
        async with mapped_errors("alert archive fetch"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT file, byte_offset, length, schema_id FROM "
                f'{q(self.schema)}.alert_archive_index WHERE "diaSourceId" = $1',
                dia_source_id,
            )
        if row is None:
            return None
        body = await asyncio.to_thread(
            self._read, self.root / row["file"], row["byte_offset"], row["length"]
        )
        return bytes([0]) + int(row["schema_id"]).to_bytes(4, "big") + body

    async def fetch(self, dia_source_id: int) -> dict[str, Any] | None:
        """The decoded alert of ``dia_source_id``, or None."""
        packet = await self.fetch_packet(dia_source_id)
        if packet is None:
            return None
        _, body = unframe(packet)
        try:
            return fastavro.schemaless_reader(io.BytesIO(body), self.alert_schema.parsed, None)
        except _DECODE_ERRORS as e:
            raise StorageError(
                f"archived alert {dia_source_id} does not decode: {type(e).__name__}: {e}"
            ) from e

    @staticmethod
    def _read(path: Path, offset: int, length: int) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as e:
            raise StorageError(f"cannot read the alert archive {path}: {e}") from e
        if len(data) != length:
            raise StorageError(f"{path} is truncated at offset {offset}")
        return data
