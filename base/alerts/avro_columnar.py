"""A columnar Avro encoder for alert packets: byte-identical to fastavro, ~20x faster.

fastavro walks every field of every dict (about 1,300 fields per alert with ten previous
DIASources and ten forced sources), about a microsecond each. Avro's binary encoding is a plain
concatenation of field encodings, so each table is instead encoded column by column with numpy
(zig-zag varints, little-endian floats, union branch bytes), rows are scattered into one
buffer, and each alert body is then a join of a few byte slices: its DIASource, the contiguous
run of its object's history rows, its DIAObject, its cutouts. ``tests/test_alerts_columnar.py``
checks byte equality with ``packet.serialize(packet.build_alerts(...))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from algorithms.association import Columns
from state.errors import ConfigurationError, InvalidInputError

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


def _with_union(
    mat: np.ndarray, lens: np.ndarray, null: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Prefix the ["null", T] branch byte: 0x00 alone for null rows, 0x02 + value otherwise."""
    out = np.zeros((mat.shape[0], mat.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = np.where(null, 0, 2)
    out[:, 1:] = mat
    return out, np.where(null, 1, lens + 1)


def _field(f: Field, cols: Columns, n: int) -> tuple[np.ndarray, np.ndarray]:
    if f.name not in cols:
        if f.nullable or f.type in ("int", "long"):
            return np.zeros((n, 1), dtype=np.uint8), np.ones(n, dtype=np.int64)
        raise InvalidInputError(f"required field {f.name!r} missing")
    col = np.asarray(cols[f.name])
    null = np.zeros(n, dtype=bool)
    if f.type in ("double", "float"):
        arr = col.astype("<f8" if f.type == "double" else "<f4")
        if f.nullable:
            null = ~np.isfinite(arr)
        mat = arr.view(np.uint8).reshape(n, arr.itemsize)
        lens = np.full(n, arr.itemsize, dtype=np.int64)
    elif f.type in ("long", "int"):
        v = col.astype(np.int64)
        if f.nullable and f.name.endswith("Id"):
            null = v == 0
        mat, lens = _varint_matrix(v)
    elif f.type == "boolean":
        mat = col.astype(bool).astype(np.uint8).reshape(n, 1)
        lens = np.ones(n, dtype=np.int64)
    elif f.type == "string":
        raw = [b"" if v is None else str(v).encode() for v in col.tolist()]
        if f.nullable:
            null = np.array([len(r) == 0 for r in raw], dtype=bool)
        slen = np.array([len(r) for r in raw], dtype=np.int64)
        vmat, vlens = _varint_matrix(slen)
        width = max(int(slen.max(initial=0)), 1)
        smat = np.frombuffer(b"".join(r.ljust(width, b"\0") for r in raw), dtype=np.uint8)
        mat = np.zeros((n, 10 + width), dtype=np.uint8)
        # Varint then text, packed left: place text after each row's varint length.
        rows = np.arange(n)[:, None]
        mat[rows, np.arange(10)[None, :]] = vmat
        mat[rows, vlens[:, None] + np.arange(width)[None, :]] = smat.reshape(n, width)
        lens = vlens + slen
    else:
        raise InvalidInputError(f"no columnar encoding for {f.name!r} of type {f.type!r}")
    if f.nullable:
        return _with_union(mat, lens, null)
    return mat, lens


def encode_rows(fields: Sequence[Field], cols: Columns, n: int) -> tuple[bytes, np.ndarray]:
    """Avro encodings of ``n`` records: one buffer and row offsets (n + 1)."""
    parts = [_field(f, cols, n) for f in fields]
    lens = np.stack([p[1] for p in parts], axis=1) if parts else np.zeros((n, 0), np.int64)
    row_len = lens.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_len, out=offsets[1:])
    out = np.zeros(int(offsets[-1]), dtype=np.uint8)
    start = offsets[:-1, None] + np.cumsum(lens, axis=1) - lens
    for k, (mat, flen) in enumerate(parts):
        width = mat.shape[1]
        if width == 1 or np.all(flen == width):
            idx = start[:, k, None] + np.arange(width)[None, :]
            out[idx[:, : int(flen.max(initial=0))]] = mat[:, : int(flen.max(initial=0))]
            continue
        ar = np.arange(width)[None, :]
        valid = ar < flen[:, None]
        out[(start[:, k, None] + ar)[valid]] = mat[valid]
    return out.tobytes(), offsets


def _grouped(
    fields: Sequence[Field], cols: Columns | None, key: str = "diaObjectId"
) -> tuple[bytes, np.ndarray, dict[int, tuple[int, int]]]:
    """Encode rows sorted by ``key`` (then time); map key -> (first row, end row)."""
    if cols is None or len(cols.get(key, ())) == 0:
        return b"", np.zeros(1, dtype=np.int64), {}
    keys = np.asarray(cols[key], dtype=np.int64)
    t = np.asarray(cols.get("midpointMjdTai", np.zeros(len(keys))), dtype=np.float64)
    order = np.lexsort((t, keys))
    sorted_cols = {k: np.asarray(v)[order] for k, v in cols.items()}
    buf, offs = encode_rows(fields, sorted_cols, len(keys))
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    ends = np.r_[starts[1:], len(ks)]
    return (
        buf,
        offs,
        dict(
            zip(ks[starts].tolist(), zip(starts.tolist(), ends.tolist(), strict=True), strict=True)
        ),
    )


def _opt_string(value: str | None) -> bytes:
    if not value:
        return b"\x00"
    raw = value.encode()
    return b"\x02" + varint(len(raw)) + raw


def encode_alerts(
    sources: Columns,
    objects: Columns | None = None,
    history: Columns | None = None,
    forced_history: Columns | None = None,
    ss_sources: Columns | None = None,
    cutouts: Sequence[Cutouts] | None = None,
    observation_reason: str | None = None,
    target_name: str | None = None,
    schema: AlertSchema | None = None,
) -> list[bytes]:
    """Framed alert packets, the same bytes as ``serialize(build_alerts(...same args...))``."""
    schema = schema or latest_schema()
    if tuple(schema.field_names("alert")) != ALERT_FIELDS:
        raise ConfigurationError(f"alert schema {schema.version} has an unexpected field layout")
    n = len(sources["diaSourceId"])
    if cutouts is not None and len(cutouts) != n:
        raise InvalidInputError(f"{len(cutouts)} cutout triples for {n} DIASources")
    src_ids = np.asarray(sources["diaSourceId"], dtype=np.int64)
    src_buf, src_off = encode_rows(schema.fields("diaSource"), sources, n)
    if history is not None and len(history.get("diaSourceId", ())):
        keep = ~np.isin(np.asarray(history["diaSourceId"]), src_ids)
        history = {k: np.asarray(v)[keep] for k, v in history.items()}
    prv_buf, prv_off, prv_rng = _grouped(schema.fields("diaSource"), history)
    fs_buf, fs_off, fs_rng = _grouped(schema.fields("diaForcedSource"), forced_history)
    obj_buf, obj_off, obj_rng = _grouped(schema.fields("diaObject"), objects)
    ss_buf, ss_off, ss_rng = _grouped(schema.fields("ssSource"), ss_sources, "diaSourceId")
    header = frame_header(schema.schema_id)
    head_tail = _opt_string(observation_reason) + _opt_string(target_name)
    sid_mat, sid_len = _varint_matrix(src_ids)
    obj_ids = np.asarray(sources.get("diaObjectId", np.zeros(n)), dtype=np.int64).tolist()
    out = []
    for k in range(n):
        oid, sid = obj_ids[k], int(src_ids[k])
        parts = [header, sid_mat[k, : sid_len[k]].tobytes(), head_tail,
                 src_buf[src_off[k] : src_off[k + 1]]]  # fmt: skip
        for buf, offs, rng in ((prv_buf, prv_off, prv_rng), (fs_buf, fs_off, fs_rng)):
            r = rng.get(oid) if oid else None
            if r is None:
                parts.append(b"\x00")
            else:
                parts += [b"\x02", varint(r[1] - r[0]), buf[offs[r[0]] : offs[r[1]]], b"\x00"]
        for buf, offs, rng, key in (
            (obj_buf, obj_off, obj_rng, oid),
            (ss_buf, ss_off, ss_rng, sid),
        ):
            r = rng.get(key) if key else None
            parts.append(b"\x00" if r is None else b"\x02" + buf[offs[r[0]] : offs[r[0] + 1]])
        parts.append(b"\x00")  # mpc_orbits
        for c in cutouts[k] if cutouts is not None else (None, None, None):
            parts.append(b"\x00" if c is None else b"\x02" + varint(len(c)) + c)
        out.append(b"".join(parts))
    return out
