"""Alert packets (DMS-REQ-0274): one per DIASource, Rubin's Avro schema, Confluent framing.

``build_alerts`` turns one CCD's columnar tables into alert records (plain dicts, as fastavro
wants); ``serialize`` writes each with fastavro's schemaless writer against the parsed schema
behind the 5-byte Confluent wire header (magic byte 0, then the schema id as a big-endian
uint32); ``decode`` reverses it. In-memory conventions map to Avro nulls: NaN floats, empty
strings, and 0 in nullable ``...Id`` fields (Rubin's "no association") become ``null``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import Any

import fastavro
import numpy as np

from algorithms.association import Columns
from state.errors import InvalidInputError

from .schema import AlertSchema, Field, latest_schema

MAGIC = 0
_HEADER = struct.Struct(">bI")

Cutouts = tuple[bytes | None, bytes | None, bytes | None]  # difference, science, template


def _column_list(field: Field, values: np.ndarray) -> list[Any]:
    t = field.type
    if t in ("double", "float"):
        arr = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(arr)
        if field.nullable and bad.any():
            obj = arr.astype(object)
            obj[bad] = None
            return obj.tolist()
        return arr.tolist()
    if t in ("long", "int"):
        lst = np.asarray(values, dtype=np.int64).tolist()
        if field.nullable and field.name.endswith("Id"):
            return [v if v != 0 else None for v in lst]
        return lst
    if t == "boolean":
        return np.asarray(values, dtype=bool).tolist()
    if t == "string":
        return [None if (v is None or v == "") and field.nullable else str(v) for v in values]
    raise InvalidInputError(f"cannot convert column {field.name!r} to Avro type {t!r}")


def records(schema: AlertSchema, record: str, cols: Columns) -> list[dict[str, Any]]:
    """Rows of ``cols`` as dicts of the schema's ``record`` type ("diaSource", "diaObject"...)."""
    fields = schema.fields(record)
    n = len(next(iter(cols.values()))) if cols else 0
    names: list[str] = []
    lists: list[Any] = []
    missing = []
    for f in fields:
        if f.name in cols:
            lists.append(_column_list(f, cols[f.name]))
        elif f.nullable:
            lists.append([None] * n)
        elif f.type in ("int", "long"):
            lists.append([0] * n)
        else:
            missing.append(f.name)
            continue
        names.append(f.name)
    if missing:
        raise InvalidInputError(f"{record}: required field(s) missing: {', '.join(missing)}")
    return [dict(zip(names, row, strict=True)) for row in zip(*lists, strict=True)]


def _by_object_and_time(cols: Columns) -> Columns:
    """Rows ordered by diaObjectId, then time: previous sources are listed oldest first."""
    ids = np.asarray(cols["diaObjectId"], dtype=np.int64)
    t = np.asarray(cols.get("midpointMjdTai", np.zeros(len(ids))), dtype=np.float64)
    order = np.lexsort((t, ids))
    return {k: np.asarray(v)[order] for k, v in cols.items()}


def _group(ids: np.ndarray, rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for key, row in zip(np.asarray(ids, dtype=np.int64).tolist(), rows, strict=True):
        out.setdefault(key, []).append(row)
    return out


def build_alerts(
    sources: Columns,
    objects: Columns | None = None,
    history: Columns | None = None,
    forced_history: Columns | None = None,
    ss_sources: Columns | None = None,
    cutouts: Sequence[Cutouts] | None = None,
    observation_reason: str | None = None,
    target_name: str | None = None,
    schema: AlertSchema | None = None,
) -> list[dict[str, Any]]:
    """One alert record per row of ``sources`` (after association).

    ``objects``: the DIAObjects as just updated; ``history`` and ``forced_history``: their
    earlier DiaSources/DiaForcedSources (the preload), from which the triggering source itself
    is excluded; ``ss_sources``: SSSource rows keyed by diaSourceId.
    """
    schema = schema or latest_schema()
    src_rows = records(schema, "diaSource", sources)
    src_ids = np.asarray(sources["diaSourceId"], dtype=np.int64).tolist()
    obj_ids = np.asarray(sources.get("diaObjectId", np.zeros(len(src_ids))), dtype=np.int64)
    by_obj: dict[int, dict[str, Any]] = {}
    if objects is not None and len(objects.get("diaObjectId", ())):
        obj_rows = records(schema, "diaObject", objects)
        by_obj = dict(zip(np.asarray(objects["diaObjectId"]).tolist(), obj_rows, strict=True))
    prv: dict[int, list[dict[str, Any]]] = {}
    if history is not None and len(history.get("diaSourceId", ())):
        history = _by_object_and_time(history)
        prv = _group(history["diaObjectId"], records(schema, "diaSource", history))
    fprv: dict[int, list[dict[str, Any]]] = {}
    if forced_history is not None and len(forced_history.get("diaObjectId", ())):
        forced_history = _by_object_and_time(forced_history)
        fprv = _group(
            forced_history["diaObjectId"], records(schema, "diaForcedSource", forced_history)
        )
    by_ss: dict[int, dict[str, Any]] = {}
    if ss_sources is not None and len(ss_sources.get("diaSourceId", ())):
        rows = records(schema, "ssSource", ss_sources)
        by_ss = dict(zip(np.asarray(ss_sources["diaSourceId"]).tolist(), rows, strict=True))
    if cutouts is not None and len(cutouts) != len(src_ids):
        raise InvalidInputError(f"{len(cutouts)} cutout triples for {len(src_ids)} DIASources")
    alerts = []
    for k, (sid, oid) in enumerate(zip(src_ids, obj_ids.tolist(), strict=True)):
        diff, sci, tmpl = cutouts[k] if cutouts is not None else (None, None, None)
        prior = [r for r in prv.get(oid, ()) if r["diaSourceId"] != sid] if oid else []
        alerts.append(
            {
                "diaSourceId": sid,
                "observation_reason": observation_reason,
                "target_name": target_name,
                "diaSource": src_rows[k],
                "prvDiaSources": prior or None,
                "prvDiaForcedSources": fprv.get(oid) if oid else None,
                "diaObject": by_obj.get(oid) if oid else None,
                "ssSource": by_ss.get(sid),
                "mpc_orbits": None,
                "cutoutDifference": diff,
                "cutoutScience": sci,
                "cutoutTemplate": tmpl,
            }
        )
    return alerts


def frame_header(schema_id: int) -> bytes:
    """The 5-byte Confluent wire header."""
    return _HEADER.pack(MAGIC, schema_id)


def serialize(alerts: Sequence[dict[str, Any]], schema: AlertSchema | None = None) -> list[bytes]:
    """Confluent-framed Avro bytes for each alert (schemaless body)."""
    schema = schema or latest_schema()
    header = frame_header(schema.schema_id)
    buf = io.BytesIO()
    out = []
    parsed = schema.parsed
    for alert in alerts:
        buf.seek(0)
        buf.truncate()
        buf.write(header)
        fastavro.schemaless_writer(buf, parsed, alert)
        out.append(buf.getvalue())
    return out


def unframe(data: bytes) -> tuple[int, bytes]:
    """Split a framed message into (schema id, Avro body); reject anything else clearly."""
    if len(data) < _HEADER.size:
        raise InvalidInputError(f"alert of {len(data)} bytes is shorter than the 5-byte header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise InvalidInputError(f"alert starts with magic byte {magic}, expected {MAGIC}")
    return schema_id, data[_HEADER.size :]


def alert_id(data: bytes | memoryview) -> int:
    """The diaSourceId of a framed alert without decoding it: the body's first field, an Avro
    long (a zigzag varint)."""
    view = memoryview(data)[_HEADER.size :]
    value = shift = 0
    for i, byte in enumerate(view[:10]):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
        if i == 9:
            break
    raise InvalidInputError("alert body does not start with a diaSourceId (a varint)")


def decode(data: bytes, schema: AlertSchema | None = None) -> dict[str, Any]:
    """Decode one framed alert written with ``schema`` (the latest by default)."""
    schema = schema or latest_schema()
    schema_id, body = unframe(data)
    if schema_id != schema.schema_id:
        raise InvalidInputError(
            f"alert written with schema id {schema_id}; this reader has {schema.schema_id}"
        )
    try:
        return fastavro.schemaless_reader(io.BytesIO(body), schema.parsed, None)
    except (EOFError, ValueError, IndexError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"corrupt alert body: {e}") from e
