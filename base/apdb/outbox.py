"""The transactional outbox from the APDB to alerts: one row per stored (visit, detector).

Association writes the row inside the APDB store transaction (:func:`put`), so a CCD's
DIASources and the record that their alerts are owed commit together or not at all; a
``pg_notify`` in the same transaction wakes the publisher at commit. The AlertPublisher
drains the rows (:class:`AlertOutbox`) and marks one done only after its alerts are archived;
the archive is idempotent per (visit, detector), so a row delivered again after a crash
publishes nothing twice. A row whose payload cannot be read is marked failed with its reason,
never retried forever and never dropped silently.

The payload is what the publisher needs to build the alerts without reading the APDB back:
the associated DIASources, the touched DIAObjects, the preloaded history, the cutouts (FITS
bytes), as one flat buffer of raw arrays after a JSON layout (no pickle; :func:`encode`);
the scalars and the stage times go in a JSON column. Rows in the earlier ``npz`` payload are
still read.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from base.db import Migration, Store, mapped_errors, migrate
from state.errors import InvalidInputError

from .schema import q

TABLE = "alert_outbox"
#: The hand-off's column groups (each a dict of equal-length arrays, or None).
COLUMN_GROUPS = ("sources", "objects", "history", "forcedHistory", "ssSources")
#: The hand-off's scalar fields, kept in the JSON column.
SCALARS = ("visit", "detector", "dayObs", "band")
_CUTOUTS = ("difference", "science", "template")
#: First bytes of a flat payload (an ``npz`` one starts ``PK``).
MAGIC = b"DMCSOB1\n"
_ALIGN = 16


#: The outbox, recorded as component ``alert_outbox`` in the APDB's schema; frozen DDL.
STORE = Store(
    TABLE,
    (
        Migration(
            1,
            "outbox table",
            f"""
CREATE TABLE IF NOT EXISTS {{schema}}.{TABLE} (
    visit bigint NOT NULL, detector integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    meta jsonb NOT NULL, payload bytea,
    published_at timestamptz, n_alerts integer, failure text,
    PRIMARY KEY (visit, detector));
-- Cutouts do not compress; skip TOAST's compression attempt.
ALTER TABLE {{schema}}.{TABLE} ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS {TABLE}_pending ON {{schema}}.{TABLE} (created_at)
    WHERE published_at IS NULL AND failure IS NULL;
""",
        ),
    ),
)


async def ensure(conn: asyncpg.Connection, schema: str) -> None:
    """Check and create the outbox table in ``schema`` (idempotent, concurrency-safe)."""
    await migrate(conn, schema, STORE)


def channel(schema: str) -> str:
    """The NOTIFY channel that announces new rows of the outbox in ``schema``."""
    return f"{schema}_{TABLE}"


# ------------------------------------------------------------------ payload
def _array(values: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A savez-able array (object columns as text) and the mask of their None entries."""
    a = np.asarray(values)
    if a.dtype != object:
        return a, None
    none = np.array([v is None for v in a.tolist()], dtype=bool)
    return np.array(["" if v is None else str(v) for v in a.tolist()], dtype=str), none


def encode(handoff: dict[str, Any]) -> tuple[str, bytes]:
    """The JSON meta and the npz payload of one alert hand-off."""
    arrays: dict[str, np.ndarray] = {}
    groups: dict[str, list[str] | None] = {}
    for group in COLUMN_GROUPS:
        cols = handoff.get(group)
        if cols is None:
            groups[group] = None
            continue
        groups[group] = list(cols)
        for name, values in cols.items():
            a, none = _array(values)
            arrays[f"{group}/{name}"] = a
            if none is not None:
                arrays[f"{group}/{name}/none"] = none
    cutouts = handoff.get("cutouts") or []
    lengths = np.full((len(cutouts), 3), -1, dtype=np.int64)
    blob = bytearray()
    for i, triple in enumerate(cutouts):
        for j, part in enumerate(triple):
            if part is not None:
                lengths[i, j] = len(part)
                blob += part
    arrays["cutouts/lengths"] = lengths
    arrays["cutouts/bytes"] = np.frombuffer(bytes(blob), dtype=np.uint8)
    meta = {k: handoff[k] for k in SCALARS}
    meta["stages"] = {k: float(v) for k, v in handoff.get("stages", {}).items()}
    meta["groups"] = groups
    return json.dumps(meta), _pack(arrays)


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    """``MAGIC``, the JSON layout's length (u64 LE), the layout ``[name, dtype, shape, offset]``
    of each array, then the arrays' bytes, each at a 16-byte aligned offset of the data.

    ``np.savez`` wrote each of the ~250 columns of a CCD as a zip member with an npy header:
    about 5 ms of CPU per CCD against 0.3 ms for this.
    """
    layout: list[list[Any]] = []
    parts: list[bytes] = []
    at = 0
    for name, a in arrays.items():
        pad = -at % _ALIGN
        if pad:
            parts.append(bytes(pad))
            at += pad
        layout.append([name, a.dtype.str, list(a.shape), at])
        data = a.tobytes()
        parts.append(data)
        at += len(data)
    head = json.dumps(layout).encode()
    pad = -(len(MAGIC) + 8 + len(head)) % _ALIGN
    return b"".join([MAGIC, struct.pack("<Q", len(head) + pad), head, b" " * pad, *parts])


def _unpack(payload: bytes) -> dict[str, np.ndarray]:
    """The arrays :func:`_pack` wrote (writable copies); ``ValueError`` if they do not fit."""
    start = len(MAGIC) + 8
    (n,) = struct.unpack_from("<Q", payload, len(MAGIC))
    layout = json.loads(payload[start : start + n])
    data = bytearray(payload[start + n :])
    arrays: dict[str, np.ndarray] = {}
    end = 0
    for name, dtype, shape, at in layout:
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise ValueError(f"{name}: object arrays are not read")
        count = math.prod(shape)
        arrays[name] = np.frombuffer(data, dt, count, at).reshape(shape)
        end = max(end, at + count * dt.itemsize)
    if end != len(data):
        raise ValueError(f"{len(data) - end} payload bytes past the last array")
    return arrays


def decode(meta_json: str, payload: bytes | None) -> dict[str, Any]:
    """The hand-off :func:`encode` stored; ``InvalidInputError`` if it cannot be read."""
    try:
        meta = json.loads(meta_json)
        if payload is None:
            raise ValueError("the payload is gone")
        if payload[: len(MAGIC)] == MAGIC:
            arrays = _unpack(payload)
        else:
            with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        handoff: dict[str, Any] = {k: meta[k] for k in SCALARS}
        handoff["stages"] = dict(meta["stages"])
        for group, names in meta["groups"].items():
            if names is None:
                handoff[group] = None
                continue
            cols: dict[str, np.ndarray] = {}
            for name in names:
                a = arrays[f"{group}/{name}"]
                none = arrays.get(f"{group}/{name}/none")
                if none is not None:
                    a = a.astype(object)
                    a[none] = None
                cols[name] = a
            handoff[group] = cols
        lengths, blob = arrays["cutouts/lengths"], arrays["cutouts/bytes"].tobytes()
        cutouts: list[tuple[bytes | None, ...]] = []
        at = 0
        for row in lengths.tolist():
            triple: list[bytes | None] = []
            for n in row:
                if n < 0:
                    triple.append(None)
                else:
                    triple.append(blob[at : at + n])
                    at += n
            cutouts.append(tuple(triple))
        if at != len(blob):
            raise ValueError(f"{len(blob) - at} cutout bytes left over")
        handoff["cutouts"] = cutouts
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        struct.error,
        zipfile.BadZipFile,
    ) as e:
        raise InvalidInputError(f"unreadable alert outbox row: {type(e).__name__}: {e}") from e
    return handoff


# ------------------------------------------------------------------ writer (in the APDB store)
async def put(
    conn: asyncpg.Connection, schema: str, visit: int, detector: int, handoff: dict[str, Any]
) -> None:
    """Write the outbox row of (visit, detector) in ``conn``'s open transaction, and notify
    (one statement: one round trip)."""
    meta, payload = encode(handoff)
    await conn.execute(
        f"WITH row AS (INSERT INTO {q(schema)}.{TABLE} (visit, detector, meta, payload)"
        " VALUES ($1, $2, $3::jsonb, $4)) SELECT pg_notify($5, $6)",
        visit,
        detector,
        meta,
        payload,
        channel(schema),
        f"{visit}/{detector}",
    )


async def stamp_stored(
    conn: asyncpg.Connection, schema: str, keys: Sequence[tuple[int, int]], tai: float
) -> None:
    """Set the ``apdbStored`` stage of the outbox rows of ``keys`` (visit, detector) to ``tai``,
    as the last statement of the transaction that wrote them: the stage is its commit's."""
    visits, detectors = zip(*keys, strict=True)
    await conn.execute(
        f"UPDATE {q(schema)}.{TABLE} SET meta = jsonb_set(meta, '{{stages,apdbStored}}',"
        " $3::jsonb) WHERE (visit, detector) IN"
        " (SELECT * FROM unnest($1::bigint[], $2::integer[]))",
        list(visits),
        list(detectors),
        json.dumps(float(tai)),  # every digit (a float8 cast to jsonb keeps 15)
    )


HandoffBuilder = Callable[[], dict[str, Any]]


# ------------------------------------------------------------------ reader (the publisher)
@dataclass(frozen=True)
class OutboxRow:
    visit: int
    detector: int
    meta: str
    payload: bytes | None


class AlertOutbox:
    """The publisher's side of the outbox in one APDB schema, over the publisher's pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema
        self._t = f"{q(schema)}.{TABLE}"

    @classmethod
    async def open(cls, pool: asyncpg.Pool, schema: str) -> AlertOutbox:
        async with mapped_errors("alert outbox open"), pool.acquire() as conn:
            await ensure(conn, schema)
        return cls(pool, schema)

    async def pending(self, limit: int = 16) -> list[OutboxRow]:
        """The oldest rows whose alerts are still owed, oldest first."""
        async with mapped_errors("alert outbox read"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT visit, detector, meta::text AS meta, payload FROM {self._t}"
                " WHERE published_at IS NULL AND failure IS NULL"
                " ORDER BY created_at, visit, detector LIMIT $1",
                limit,
            )
        return [OutboxRow(r["visit"], r["detector"], r["meta"], r["payload"]) for r in rows]

    async def done(self, visit: int, detector: int, n_alerts: int) -> None:
        """Mark a row published (its payload dropped: the archive holds the alerts now)."""
        async with mapped_errors("alert outbox done"), self._pool.acquire() as conn:
            await conn.execute(
                f"UPDATE {self._t} SET published_at = clock_timestamp(), n_alerts = $3,"
                " payload = NULL WHERE visit = $1 AND detector = $2",
                visit,
                detector,
                n_alerts,
            )

    async def failed(self, visit: int, detector: int, reason: str) -> None:
        """Mark a row that cannot be published, with why (kept, for daytime recovery)."""
        async with mapped_errors("alert outbox failed"), self._pool.acquire() as conn:
            await conn.execute(
                f"UPDATE {self._t} SET failure = $3 WHERE visit = $1 AND detector = $2",
                visit,
                detector,
                reason,
            )

    async def counts(self) -> dict[str, int]:
        """Rows pending, published and failed."""
        async with mapped_errors("alert outbox counts"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE published_at IS NULL AND failure IS NULL),"
                " count(*) FILTER (WHERE published_at IS NOT NULL),"
                f" count(*) FILTER (WHERE failure IS NOT NULL) FROM {self._t}"
            )
        return {"pending": int(row[0]), "published": int(row[1]), "failed": int(row[2])}
