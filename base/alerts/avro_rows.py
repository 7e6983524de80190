"""Avro binary encoding of many records of one flat schema at once, in numba.

Each field is first reduced with numpy to one int64 column plus a null mask (doubles and floats
as their IEEE bit patterns, ints as values to zig-zag, booleans as 0/1, strings as spans of a
byte pool); two numba passes then size and write every row. About 10 ns per field of a row,
against microseconds for fastavro's per-dict walk; the bytes are identical (the tests check).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from algorithms.association import Columns
from state.errors import InvalidInputError

from .schema import Field

_F64, _F32, _VARINT, _BOOL, _STR = 0, 1, 2, 3, 4
_KIND = {"double": _F64, "float": _F32, "long": _VARINT, "int": _VARINT, "boolean": _BOOL,
         "string": _STR}  # fmt: skip
_CHUNK = 16_384


@numba.njit(cache=True, nogil=True)
def _varint_len(z: np.uint64) -> int:
    n = 1
    while z >= 0x80:
        z >>= np.uint64(7)
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _zigzag(v: np.int64) -> np.uint64:
    return np.uint64((v << 1) ^ (v >> 63))


@numba.njit(cache=True, nogil=True)
def _sizes(
    kinds: np.ndarray, nullable: np.ndarray, vals: np.ndarray, nulls: np.ndarray,
    str_off: np.ndarray,
) -> np.ndarray:  # fmt: skip
    nf, n = vals.shape
    out = np.zeros(n + 1, np.int64)
    for i in range(n):
        size = 0
        for f in range(nf):
            if nullable[f]:
                size += 1
                if nulls[f, i]:
                    continue
            k = kinds[f]
            if k == 0:
                size += 8
            elif k == 1:
                size += 4
            elif k == 2:
                size += _varint_len(_zigzag(vals[f, i]))
            elif k == 3:
                size += 1
            else:
                s = vals[f, i]
                length = str_off[s + 1] - str_off[s]
                size += _varint_len(_zigzag(length)) + length
        out[i + 1] = out[i] + size
    return out


@numba.njit(cache=True, nogil=True)
def _put_varint(buf: np.ndarray, pos: int, z: np.uint64) -> int:
    while z >= 0x80:
        buf[pos] = np.uint8((z & np.uint64(0x7F)) | np.uint64(0x80))
        z >>= np.uint64(7)
        pos += 1
    buf[pos] = np.uint8(z)
    return pos + 1


@numba.njit(cache=True, nogil=True)
def _write(
    kinds: np.ndarray, nullable: np.ndarray, vals: np.ndarray, nulls: np.ndarray,
    str_off: np.ndarray, pool: np.ndarray, offsets: np.ndarray, buf: np.ndarray,
) -> None:  # fmt: skip
    nf, n = vals.shape
    for i in range(n):
        pos = offsets[i]
        for f in range(nf):
            if nullable[f]:
                if nulls[f, i]:
                    buf[pos] = 0
                    pos += 1
                    continue
                buf[pos] = 2
                pos += 1
            k = kinds[f]
            v = vals[f, i]
            if k <= 1:
                u = np.uint64(v)
                for b in range(8 if k == 0 else 4):
                    buf[pos + b] = np.uint8((u >> np.uint64(8 * b)) & np.uint64(0xFF))
                pos += 8 if k == 0 else 4
            elif k == 2:
                pos = _put_varint(buf, pos, _zigzag(v))
            elif k == 3:
                buf[pos] = np.uint8(v != 0)
                pos += 1
            else:
                a, e = str_off[v], str_off[v + 1]
                pos = _put_varint(buf, pos, _zigzag(e - a))
                buf[pos : pos + e - a] = pool[a:e]
                pos += e - a


def _columns(fields: Sequence[Field], cols: Columns, lo: int, hi: int) -> tuple:
    n = hi - lo
    nf = len(fields)
    vals = np.zeros((nf, n), dtype=np.int64)
    nulls = np.zeros((nf, n), dtype=np.bool_)
    kinds = np.array([_KIND[f.type] for f in fields], dtype=np.int64)
    nullable = np.array([f.nullable for f in fields], dtype=np.bool_)
    strings: list[bytes] = []
    for j, f in enumerate(fields):
        if f.name not in cols:
            if not (f.nullable or f.type in ("int", "long")):
                raise InvalidInputError(f"required field {f.name!r} missing")
            nulls[j] = True
            if not f.nullable:
                kinds[j] = _VARINT
            continue
        col = np.asarray(cols[f.name])[lo:hi]
        if f.type == "double":
            arr = col.astype("<f8")
            vals[j] = arr.view(np.int64)
            if f.nullable:
                nulls[j] = ~np.isfinite(arr)
        elif f.type == "float":
            arr = col.astype("<f4")
            vals[j] = arr.view(np.uint32)
            if f.nullable:
                nulls[j] = ~np.isfinite(arr)
        elif f.type in ("long", "int", "boolean"):
            vals[j] = col.astype(np.int64) if f.type != "boolean" else col.astype(bool)
            if f.nullable and f.type != "boolean" and f.name.endswith("Id"):
                nulls[j] = vals[j] == 0
        else:
            raw = [b"" if v is None else str(v).encode() for v in col.tolist()]
            vals[j] = np.arange(len(strings), len(strings) + n)
            strings += raw
            if f.nullable:
                nulls[j] = np.fromiter((len(r) == 0 for r in raw), dtype=bool, count=n)
    str_off = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in strings], out=str_off[1:])
    pool = np.frombuffer(b"".join(strings) or b"\0", dtype=np.uint8)
    return kinds, nullable, vals, nulls, str_off, pool


def encode_rows(fields: Sequence[Field], cols: Columns, n: int) -> tuple[bytes, np.ndarray]:
    """Avro encodings of ``n`` records: one buffer and row offsets (n + 1)."""
    parts: list[np.ndarray] = []
    offsets = [np.zeros(1, dtype=np.int64)]
    base = 0
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        kinds, nullable, vals, nulls, str_off, pool = _columns(fields, cols, lo, hi)
        off = _sizes(kinds, nullable, vals, nulls, str_off)
        buf = np.empty(int(off[-1]), dtype=np.uint8)
        _write(kinds, nullable, vals, nulls, str_off, pool, off, buf)
        parts.append(buf)
        offsets.append(off[1:] + base)
        base += int(off[-1])
    return b"".join(p.tobytes() for p in parts), np.concatenate(offsets)
