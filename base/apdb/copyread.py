"""Bulk reads as binary COPY, decoded straight into numpy columns.

Decoding a query result into Python objects costs ~0.5 µs per value; a full-focal-plane preload
is ~20M values. ``COPY (query) TO STDOUT (FORMAT binary)`` instead returns one byte stream; one
numba pass writes every fixed-width field, byte-swapped, straight into its column (no matrix of
field offsets), and notes where the text fields are. NULL (length -1) becomes NaN / 0 / False /
"" as everywhere else in dmcs; a text column decodes each distinct value once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import numba
import numpy as np

from .schema import Table

#: Streams up to this size are decoded on the event loop (well under a millisecond).
INLINE_DECODE_BYTES = 1 << 20
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_BIG_ENDIAN = {
    "double precision": ">f8", "real": ">f4", "bigint": ">i8", "integer": ">i4",
    "smallint": ">i2", "boolean": "u1",
}  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _count_rows(buf: np.ndarray, start: int) -> int:
    """Rows in the stream; a row cut short counts (the decoding then says where it ends)."""
    pos, rows = start, 0
    while pos + 2 <= len(buf):
        nf = (np.int32(buf[pos]) << 8) | np.int32(buf[pos + 1])
        if nf == 0xFFFF:
            break
        pos += 2
        for _ in range(nf):
            if pos + 4 > len(buf):
                return rows + 1
            n = (
                (np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16)
                | (np.int64(buf[pos + 2]) << 8) | np.int64(buf[pos + 3])
            )  # fmt: skip
            pos += 4
            if n != 0xFFFFFFFF:
                pos += n
        rows += 1
    return rows


@numba.njit(cache=True, nogil=True)
def _decode_rows(
    buf: np.ndarray, start: int, sizes: np.ndarray, col_start: np.ndarray, out: np.ndarray,
    nulls: np.ndarray, str_index: np.ndarray, str_off: np.ndarray, str_len: np.ndarray,
) -> int:  # fmt: skip
    """One pass over the rows: the bytes of each fixed-width field (``sizes[j]`` > 0) reversed
    to little endian into its column of ``out`` (from ``col_start[j]``; a NULL leaves zeros and
    sets ``nulls[j, r]``); each text field's offset and length into ``str_*[str_index[j]]``.
    Returns the first row that does not fit the table (other field count or width, or cut
    short), else -1."""
    pos = start
    end = len(buf)
    for r in range(nulls.shape[1]):
        if pos + 2 > end:
            return r
        nf = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
        if nf != len(sizes):
            return r
        pos += 2
        for j in range(len(sizes)):
            if pos + 4 > end:
                return r
            n = (
                (np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16)
                | (np.int64(buf[pos + 2]) << 8) | np.int64(buf[pos + 3])
            )  # fmt: skip
            pos += 4
            s = sizes[j]
            if n == 0xFFFFFFFF:
                nulls[j, r] = True
                if s == 0:
                    str_len[str_index[j], r] = 0
                else:
                    for b in range(s):
                        out[col_start[j] + r * s + b] = 0
                continue
            if pos + n > end or s not in (0, n):
                return r
            if s == 0:
                str_off[str_index[j], r] = pos
                str_len[str_index[j], r] = n
            else:
                d = col_start[j] + r * s
                for b in range(s):
                    out[d + b] = buf[pos + s - 1 - b]
            pos += n
    return -1


@numba.njit(cache=True, nogil=True)
def _gather_text(buf: np.ndarray, off: np.ndarray, length: np.ndarray, out: np.ndarray) -> None:
    """Each text field's bytes into its row of ``out`` (zero-padded to the widest)."""
    for r in range(len(off)):
        for b in range(length[r]):
            out[r, b] = buf[off[r] + b]


def _text_column(buf: np.ndarray, off: np.ndarray, length: np.ndarray) -> np.ndarray:
    """A text column as an object array of str; each distinct value is decoded once (the
    columns read in bulk, ``band`` and versions, have a handful of values)."""
    width = max(int(length.max()) if len(length) else 0, 1)
    raw = np.zeros((len(off), width), dtype=np.uint8)
    _gather_text(buf, off, length, raw)
    values, inverse = np.unique(raw.view(f"S{width}").ravel(), return_inverse=True)
    decoded = np.array([v.decode() for v in values.tolist()], dtype=object)
    return decoded[inverse.ravel()] if len(off) else np.zeros(0, dtype=object)


def decode_copy(data: bytes, table: Table) -> dict[str, np.ndarray]:
    """Columns of ``table`` (all of them, in order) from a binary COPY stream."""
    if not data.startswith(_SIGNATURE):
        raise ValueError("not a PostgreSQL binary COPY stream")
    buf = np.frombuffer(data, dtype=np.uint8)
    ext = int.from_bytes(data[15:19], "big")
    start = 19 + ext
    n = _count_rows(buf, start)
    cols = table.columns
    sizes = np.array(
        [0 if c.kind == "str" else np.dtype(_BIG_ENDIAN[c.pg_type]).itemsize for c in cols],
        dtype=np.int64,
    )
    span = (sizes * n + 7) // 8 * 8  # every column 8-byte aligned
    col_start = np.zeros(len(cols), dtype=np.int64)
    np.cumsum(span[:-1], out=col_start[1:])
    text = [j for j, c in enumerate(cols) if c.kind == "str"]
    str_index = np.zeros(len(cols), dtype=np.int64)
    str_index[text] = np.arange(len(text))
    str_off = np.zeros((len(text), n), dtype=np.int64)
    str_len = np.zeros((len(text), n), dtype=np.int64)
    out = np.empty(int(span.sum()), dtype=np.uint8)
    nulls = np.zeros((len(cols), n), dtype=np.bool_)
    bad = _decode_rows(buf, start, sizes, col_start, out, nulls, str_index, str_off, str_len)
    if bad >= 0:
        raise ValueError(
            f"binary COPY row {bad} does not have the {len(cols)} fields of {table.name}"
        )
    result: dict[str, np.ndarray] = {}
    for j, c in enumerate(cols):
        if c.kind == "str":
            k = str_index[j]
            result[c.name] = _text_column(buf, str_off[k], str_len[k])
            continue
        dt = np.dtype(_BIG_ENDIAN[c.pg_type]).newbyteorder("<")
        lo = int(col_start[j])
        values = out[lo : lo + n * dt.itemsize].view(dt)
        if values.dtype != np.dtype(c.np_type):
            values = values.astype(c.np_type)
        null = nulls[j]
        if c.kind == "float" and null.any():
            values[null] = np.nan
        result[c.name] = values
    return result


def copy_query(table: Table, select_sql: str, order_by: str = "") -> str:
    """The query to COPY: ``table``'s columns, in order, from ``select_sql``'s rows."""
    cols = ", ".join(f'o."{c.name}"' for c in table.columns)
    order = f' ORDER BY o."{order_by}"' if order_by else ""
    return f"SELECT {cols} FROM ({select_sql}) o{order}"


def int_array(values: Any) -> str:
    """A bigint[] literal (COPY takes no parameters; integers are safe to inline)."""
    ints = np.asarray(values, dtype=np.int64)
    return "'{" + ",".join(map(str, ints.tolist())) + "}'::bigint[]"


async def fetch_columns(
    conn: asyncpg.Connection, table: Table, select_sql: str, order_by: str = ""
) -> dict[str, np.ndarray]:
    """Run ``select_sql`` as a binary COPY and decode it into columns (a stream over
    :data:`INLINE_DECODE_BYTES` in a thread: the decoding kernels release the GIL, and the event
    loop goes on meanwhile; a small one here, where the hand-off to a thread would cost more
    than the decoding)."""
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    query = copy_query(table, select_sql, order_by)
    await conn.copy_from_query(query, output=sink, format="binary")
    data = b"".join(chunks)
    chunks.clear()
    if len(data) <= INLINE_DECODE_BYTES:
        return decode_copy(data, table)
    return await asyncio.to_thread(decode_copy, data, table)
