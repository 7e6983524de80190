"""A columnar Avro encoder for alert packets: byte-identical to fastavro, ~20x faster.

fastavro walks every field of every dict (about 1,300 fields per alert with ten previous
DIASources and ten forced sources), about a microsecond each. Avro's binary encoding is a plain
concatenation of field encodings, so each table is instead encoded at once (``avro_rows``:
numpy per column, then numba per row) into one buffer, and each alert body is then a join of
a few byte slices: its DIASource, the contiguous run of its object's history rows, its
DIAObject, its cutouts. ``tests/test_alerts_columnar.py``
checks byte equality with ``packet.serialize(packet.build_alerts(...))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from algorithms.association import Columns
from state.errors import ConfigurationError, InvalidInputError

from .avro_rows import encode_rows
from .batch import N_SEGMENTS, AlertBatch, BufferPool, assemble
from .packet import Cutouts, frame_header
from .schema import AlertSchema, Field, latest_schema

ALERT_FIELDS = (
    "diaSourceId", "observation_reason", "target_name", "diaSource", "prvDiaSources",
    "prvDiaForcedSources", "diaObject", "ssSource", "mpc_orbits", "cutoutDifference",
    "cutoutScience", "cutoutTemplate",
)  # fmt: skip


def _varint_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zig-zag varints of int64 values: (n, 10) uint8 matrix and byte lengths."""
    v = np.asarray(values, dtype=np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    lens = np.ones(len(v), dtype=np.int64)
    for i in range(1, 10):
        lens += z >= np.uint64(1) << np.uint64(7 * i)
    mat = np.empty((len(v), 10), dtype=np.uint8)
    for i in range(10):
        byte = (z >> np.uint64(7 * i)) & np.uint64(0x7F)
        cont = (i < lens - 1).astype(np.uint64) << np.uint64(7)
        mat[:, i] = (byte | cont).astype(np.uint8)
    return mat, lens


def varint(value: int) -> bytes:
    """One zig-zag varint, in plain Python (numpy's per-call overhead dominates for scalars)."""
    z = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


@dataclass(frozen=True)
class _Group:
    buf: np.ndarray  # encoded rows, sorted by key then time
    offsets: np.ndarray  # row offsets into buf (rows + 1)
    keys: np.ndarray  # distinct keys, sorted
    first: np.ndarray  # first row of each key
    end: np.ndarray  # one past the last row of each key

    def lookup(self, want: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each wanted key (0 = none): (present, start byte, end byte) of its rows."""
        if len(self.keys) == 0:
            zero = np.zeros(len(want), dtype=np.int64)
            return np.zeros(len(want), dtype=bool), zero, zero
        pos = np.clip(np.searchsorted(self.keys, want), 0, len(self.keys) - 1)
        has = (self.keys[pos] == want) & (want != 0)
        a = np.where(has, self.offsets[self.first[pos]], 0)
        b = np.where(has, self.offsets[self.end[pos]], 0)
        return has, a, b


def _grouped(fields: Sequence[Field], cols: Columns | None, key: str = "diaObjectId") -> _Group:
    """Encode rows sorted by ``key`` (then time), with the row range of every key."""
    empty = np.zeros(0, dtype=np.int64)
    if cols is None or len(cols.get(key, ())) == 0:
        return _Group(np.zeros(0, np.uint8), np.zeros(1, np.int64), empty, empty, empty)
    keys = np.asarray(cols[key], dtype=np.int64)
    t = np.asarray(cols.get("midpointMjdTai", np.zeros(len(keys))), dtype=np.float64)
    order = np.lexsort((t, keys))
    sorted_cols = {k: np.asarray(v)[order] for k, v in cols.items()}
    buf, offs = encode_rows(fields, sorted_cols, len(keys))
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    ends = np.r_[starts[1:], len(ks)]
    return _Group(np.frombuffer(buf, dtype=np.uint8), offs, ks[starts], starts, ends)


def _opt_string(value: str | None) -> bytes:
    if not value:
        return b"\x00"
    raw = value.encode()
    return b"\x02" + varint(len(raw)) + raw


@dataclass(frozen=True)
class CutoutPlanes:
    """Cutouts of a CCD as arrays: row k of each (n, nbytes) uint8 array is source k's FITS
    file (``CutoutTemplate.render``); None where that kind of cutout is not sent."""

    difference: np.ndarray | None
    science: np.ndarray | None
    template: np.ndarray | None


def _cutout_columns(
    cutouts: Sequence[Cutouts] | CutoutPlanes | None, n: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per kind: (byte pool, start per source, size per source with -1 for none)."""
    none = (np.zeros(1, np.uint8), np.zeros(n, np.int64), np.full(n, -1, np.int64))
    if cutouts is None:
        return [none] * 3
    if isinstance(cutouts, CutoutPlanes):
        out = []
        for arr in (cutouts.difference, cutouts.science, cutouts.template):
            if arr is None:
                out.append(none)
                continue
            if arr.dtype != np.uint8 or arr.ndim != 2 or len(arr) != n:
                raise InvalidInputError(f"cutout planes must be ({n}, nbytes) uint8 arrays")
            size = arr.shape[1]
            out.append((arr, np.arange(n, dtype=np.int64) * size, np.full(n, size, np.int64)))
        return out
    if len(cutouts) != n:
        raise InvalidInputError(f"{len(cutouts)} cutout triples for {n} DIASources")
    out = []
    for c in range(3):
        items = [t[c] for t in cutouts]
        size = np.array([-1 if x is None else memoryview(x).nbytes for x in items], np.int64)
        start = np.zeros(n, dtype=np.int64)
        np.cumsum(np.maximum(size, 0)[:-1], out=start[1:])
        pool = b"".join(x for x in items if x is not None) or b"\0"
        out.append((np.frombuffer(pool, dtype=np.uint8), start, size))
    return out


def encode_alert_batch(
    sources: Columns,
    objects: Columns | None = None,
    history: Columns | None = None,
    forced_history: Columns | None = None,
    ss_sources: Columns | None = None,
    cutouts: Sequence[Cutouts] | CutoutPlanes | None = None,
    observation_reason: str | None = None,
    target_name: str | None = None,
    schema: AlertSchema | None = None,
    pool: BufferPool | None = None,
) -> AlertBatch:
    """One CCD's framed packets in one buffer (from ``pool`` if given); packet k has the same
    bytes as ``serialize(build_alerts(...same args...))[k]``."""
    schema = schema or latest_schema()
    if tuple(schema.field_names("alert")) != ALERT_FIELDS:
        raise ConfigurationError(f"alert schema {schema.version} has an unexpected field layout")
    n = len(sources["diaSourceId"])
    cut = _cutout_columns(cutouts, n)
    src_ids = np.asarray(sources["diaSourceId"], dtype=np.int64)
    src_buf, src_off = encode_rows(schema.fields("diaSource"), sources, n)
    if history is not None and len(history.get("diaSourceId", ())):
        keep = ~np.isin(np.asarray(history["diaSourceId"]), src_ids)
        history = {k: np.asarray(v)[keep] for k, v in history.items()}
    prv = _grouped(schema.fields("diaSource"), history)
    fs = _grouped(schema.fields("diaForcedSource"), forced_history)
    obj = _grouped(schema.fields("diaObject"), objects)
    ss = _grouped(schema.fields("ssSource"), ss_sources, "diaSourceId")
    obj_ids = np.asarray(sources.get("diaObjectId", np.zeros(n)), dtype=np.int64)
    head_tail = np.frombuffer(_opt_string(observation_reason) + _opt_string(target_name), np.uint8)
    row10 = np.arange(n, dtype=np.int64) * 10
    start = np.zeros((n, N_SEGMENTS), dtype=np.int64)
    length = np.zeros((n, N_SEGMENTS), dtype=np.int64)
    union = np.array([0, 2], dtype=np.uint8)
    arrays: list[np.ndarray] = [
        union, np.frombuffer(frame_header(schema.schema_id), np.uint8), head_tail,
    ]  # fmt: skip
    which: list[int] = []

    def segment(array: int, s: np.ndarray | int, size: np.ndarray | int) -> None:
        start[:, len(which)] = s
        length[:, len(which)] = size
        which.append(array)

    def add(array: np.ndarray) -> int:
        arrays.append(array)
        return len(arrays) - 1

    segment(1, 0, 5)
    sid_mat, sid_len = _varint_matrix(src_ids)
    segment(add(sid_mat), row10, sid_len)
    segment(2, 0, len(head_tail))
    segment(add(np.frombuffer(src_buf, np.uint8)), src_off[:-1], np.diff(src_off))
    for group, key in ((prv, obj_ids), (fs, obj_ids)):  # arrays: branch, count, rows, end
        has, a, b = group.lookup(key)
        count_mat, count_len = _varint_matrix(np.searchsorted(group.offsets, b) -
                                              np.searchsorted(group.offsets, a))  # fmt: skip
        segment(0, has.astype(np.int64), 1)
        segment(add(count_mat), row10, np.where(has, count_len, 0))
        segment(add(group.buf), a, b - a)
        segment(0, 0, has.astype(np.int64))
    for group, key in ((obj, obj_ids), (ss, src_ids)):  # one record: branch, the record
        has, a, _ = group.lookup(key)
        first = np.searchsorted(group.offsets, a)
        b = group.offsets[np.minimum(first + 1, len(group.offsets) - 1)]
        segment(0, has.astype(np.int64), 1)
        segment(add(group.buf), a, np.where(has, b - a, 0))
    segment(0, 0, 1)  # mpc_orbits: null
    for cut_bytes, s, size in cut:
        has = size >= 0
        len_mat, len_len = _varint_matrix(np.maximum(size, 0))
        segment(0, has.astype(np.int64), 1)
        segment(add(len_mat), row10, np.where(has, len_len, 0))
        segment(add(cut_bytes), s, np.maximum(size, 0))
    return assemble(src_ids, arrays, which, start, length, pool)


def encode_alerts(
    sources: Columns,
    objects: Columns | None = None,
    history: Columns | None = None,
    forced_history: Columns | None = None,
    ss_sources: Columns | None = None,
    cutouts: Sequence[Cutouts] | CutoutPlanes | None = None,
    observation_reason: str | None = None,
    target_name: str | None = None,
    schema: AlertSchema | None = None,
) -> list[bytes]:
    """Framed alert packets as bytes, the same as ``serialize(build_alerts(...same args...))``."""
    batch = encode_alert_batch(
        sources, objects, history, forced_history, ss_sources, cutouts,
        observation_reason, target_name, schema,
    )  # fmt: skip
    return [bytes(p) for p in batch]
