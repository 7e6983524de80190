"""The alert archive (DMS-REQ-0094): Avro object-container files per night, indexed in PostgreSQL.

Each night has one container file ``alerts-<night>.avro`` (standard Avro: header with the
alert schema, codec ``null``, then blocks). A (visit, detector) batch is appended as one block
built from the *already serialized* alert bodies, so archiving re-encodes nothing and the
archive holds byte-for-byte what the stream sent. With the null codec a record's bytes are
contiguous, so the index keeps (file, offset, length) per diaSourceId and a fetch is one seek.

Order of a write: append + fsync the block, then in one transaction insert the index rows and
the (visit, detector) ledger row. A batch whose ledger row exists is skipped, so a retry adds
nothing; a crash between the two steps leaves unindexed bytes that a retry supersedes.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import fastavro
import numpy as np

from base.db import Migration, Store, connect_pool, mapped_errors, migrate, q
from state.errors import InvalidInputError, StorageError

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
    ),
)


def night_file(root: Path, night: int) -> Path:
    """The container file of ``night`` in the archive at ``root``."""
    return root / f"alerts-{night}.avro"


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
    ) -> bool:
        """Archive one (visit, detector) batch of framed alerts; False if already archived."""
        if len(ids) != len(packets):
            raise InvalidInputError(f"{len(ids)} ids for {len(packets)} packets")
        if not packets:
            return False
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
                return False
            async with self._lock:
                offsets = await asyncio.to_thread(self._append, night, bodies)
            rows = [
                (int(i), night, self.path(night).name, off, len(b), visit, detector,
                 self.alert_schema.schema_id)
                for i, off, b in zip(ids, offsets, bodies, strict=True)
            ]  # fmt: skip
            async with conn.transaction():
                claimed = await conn.fetchval(
                    f"INSERT INTO {tname} (visit, detector, night, n_alerts) VALUES ($1,$2,$3,$4)"
                    " ON CONFLICT DO NOTHING RETURNING 1",
                    visit, detector, night, len(rows),
                )  # fmt: skip
                if not claimed:
                    return False
                await conn.copy_records_to_table(
                    "alert_archive_index",
                    schema_name=self.schema,
                    records=rows,
                    columns=["diaSourceId", "night", "file", "byte_offset", "length", "visit",
                             "detector", "schema_id"],
                )  # fmt: skip
        return True

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
