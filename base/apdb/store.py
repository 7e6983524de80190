"""The DiaObject versioning inside one APDB store transaction, safe under concurrent writers.

Two CCDs (of one visit, or of overlapping visits processed at once) can update the same
DiaObject. Each store therefore

1. locks the DiaObjectLast rows of the objects it touches, in ``diaObjectId`` order (no
   deadlock between two writers), and reads their current ``validityStartMjdTai``. DiaObjectLast
   is updated in place (``INSERT ... ON CONFLICT DO UPDATE``), never deleted and re-inserted, so
   a writer that waited on a row lock locks the row the other writer left, and every later
   statement of its transaction (READ COMMITTED) sees what that writer committed;
2. finds the *contended* objects: those whose current version starts at or after this one,
   i.e. a concurrent writer got there first. Their summaries, computed by association from a
   preload that did not have the other writer's sources, are recomputed here from the history
   now in the database (this CCD's DiaSources included), and their version starts at the later
   of the two times; a version with that same start is replaced rather than duplicated;
3. closes every open version (``validityEndMjdTai IS NULL``) of the touched objects and appends
   the new ones, so exactly one version per ``diaObjectId`` stays open.
"""

from __future__ import annotations

import io

import asyncpg
import numpy as np

from algorithms.association import Columns
from algorithms.association_summary import summarize

from . import schema as sch
from .copywrite import copy_payload
from .rows import columns_from_row
from .schema import q
from .spatial import pixel_ids


async def lock_current(conn: asyncpg.Connection, last: str, ids: list[int]) -> dict[int, float]:
    """Lock the DiaObjectLast rows of ``ids`` in id order; their current validity start."""
    rows = await conn.fetch(
        f'SELECT "diaObjectId", "validityStartMjdTai" FROM {last}'
        ' WHERE "diaObjectId" = ANY($1::bigint[]) ORDER BY "diaObjectId" FOR UPDATE',
        ids,
    )
    return {int(r[0]): float(r[1]) for r in rows}


def contended(objects: Columns, current: dict[int, float]) -> np.ndarray:
    """Row mask of ``objects`` whose current version starts at or after the new one."""
    ids = np.asarray(objects["diaObjectId"], dtype=np.int64)
    start = np.asarray(objects["validityStartMjdTai"], dtype=np.float64)
    cur = np.array([current.get(i, -np.inf) for i in ids.tolist()], dtype=np.float64)
    return cur >= start


async def recompute(
    conn: asyncpg.Connection,
    schema: str,
    objects: Columns,
    rows: np.ndarray,
    current: dict[int, float],
) -> Columns:
    """``objects`` with the summaries of ``rows`` recomputed from the stored history."""
    ids = np.asarray(objects["diaObjectId"], dtype=np.int64)[rows]
    history: dict[str, Columns] = {}
    for name in ("DiaSource", "DiaForcedSource"):
        t = sch.tables()[name]
        row = await conn.fetchrow(
            f"SELECT {sch.select_columns_sql(t)} FROM {q(schema)}.{q(name)}"
            ' WHERE "diaObjectId" = ANY($1::bigint[])',
            ids.tolist(),
        )
        history[name] = columns_from_row(t, row)
    summary = summarize(ids, history["DiaSource"], history["DiaForcedSource"])
    out = {k: np.array(v, copy=True) for k, v in objects.items()}
    n = len(out["diaObjectId"])
    for k, values in summary.items():
        v = np.asarray(values)
        if k not in out:
            out[k] = np.full(n, np.nan) if v.dtype.kind == "f" else np.zeros(n, dtype=v.dtype)
        out[k][rows] = v.astype(out[k].dtype, copy=False)
    start = out["validityStartMjdTai"].astype(np.float64)
    start[rows] = np.maximum(start[rows], [current[i] for i in ids.tolist()])
    out["validityStartMjdTai"] = start
    return out


def object_records(objects: Columns) -> tuple[list[str], bytes]:
    """Column names and binary COPY of new DiaObject versions (with pixelId)."""
    n = len(objects["diaObjectId"])
    cols = {**objects, "pixelId": pixel_ids(objects["ra"], objects["dec"])}
    return copy_payload(sch.tables()["DiaObject"], cols, n)


async def write_versions(
    conn: asyncpg.Connection,
    schema: str,
    objects: Columns,
    prepared: tuple[list[str], bytes],
    replace: np.ndarray,
) -> None:
    """Close the open versions, append the new ones, and update DiaObjectLast in place.

    ``replace`` marks rows whose exact (diaObjectId, validityStartMjdTai) may already exist
    (contended objects): that version is replaced. DiaObjectLast takes the new versions from
    DiaObject itself (by its primary key, in one statement), so the rows are sent once and
    the two tables hold the same values.
    """
    t_obj, t_last = f"{q(schema)}.{q('DiaObject')}", f"{q(schema)}.{q('DiaObjectLast')}"
    ids = np.asarray(objects["diaObjectId"], dtype=np.int64)
    start = np.asarray(objects["validityStartMjdTai"], dtype=np.float64)
    order = np.argsort(ids, kind="stable")  # the primary key's order: index pages in sequence
    ids_list, start_list = ids[order].tolist(), start[order].tolist()
    if replace.any():
        await conn.execute(
            f"DELETE FROM {t_obj} d USING unnest($1::bigint[], $2::float8[]) AS u(id, t)"
            ' WHERE d."diaObjectId" = u.id AND d."validityStartMjdTai" = u.t',
            ids[replace].tolist(),
            start[replace].tolist(),
        )
    await conn.execute(
        f'UPDATE {t_obj} d SET "validityEndMjdTai" = u.t'
        " FROM unnest($1::bigint[], $2::float8[]) AS u(id, t)"
        ' WHERE d."diaObjectId" = u.id AND d."validityEndMjdTai" IS NULL',
        ids_list,
        start_list,
    )
    names, payload = prepared
    await conn.copy_to_table(
        "DiaObject", source=io.BytesIO(payload), schema_name=schema, columns=names,
        format="binary",
    )  # fmt: skip
    cols = ", ".join(q(c.name) for c in sch.tables()["DiaObjectLast"].columns)
    excluded = ", ".join(f"EXCLUDED.{q(c.name)}" for c in sch.tables()["DiaObjectLast"].columns)
    await conn.execute(
        f"INSERT INTO {t_last} ({cols}) SELECT {cols} FROM {t_obj} d"
        " JOIN unnest($1::bigint[], $2::float8[]) WITH ORDINALITY AS u(id, t, i)"
        ' ON d."diaObjectId" = u.id AND d."validityStartMjdTai" = u.t ORDER BY u.i'
        f' ON CONFLICT ("diaObjectId") DO UPDATE SET ({cols}) = ROW({excluded})',
        ids_list,
        start_list,
    )
