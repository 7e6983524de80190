"""COPY-ready rows of APDB tables and the decoding of ``array_agg`` columns."""

from __future__ import annotations

from typing import Any

import asyncpg
import numpy as np

from .schema import Table


def _as_list(values: np.ndarray, kind: str) -> list[Any]:
    if kind == "float":
        arr = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            obj = arr.astype(object)
            obj[bad] = None
            return obj.tolist()
        return arr.tolist()
    if kind == "str":
        return [None if v is None or v == "" else str(v) for v in np.asarray(values).tolist()]
    return np.asarray(values).tolist()


def records(
    table: Table, cols: dict[str, np.ndarray], n: int, fill: dict[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """COPY-ready rows: the schema columns present in ``cols`` (or ``fill``), NaN/'' -> NULL.

    Missing NOT NULL integer columns (Ndata counters, bboxSize) default to 0; a missing NOT NULL
    column of another kind is an error.
    """
    fill = fill or {}
    names: list[str] = []
    lists: list[list[Any]] = []
    for c in table.columns:
        if c.name in cols:
            values = np.asarray(cols[c.name])
            if len(values) != n:
                raise ValueError(f"{table.name}.{c.name} has {len(values)} rows, expected {n}")
            lists.append(_as_list(values, c.kind))
        elif c.name in fill:
            lists.append([fill[c.name]] * n)
        elif not c.nullable and c.kind == "int":
            lists.append([0] * n)
        elif not c.nullable:
            raise ValueError(f"{table.name}.{c.name} is required (NOT NULL) and was not given")
        else:
            continue
        names.append(c.name)
    return names, list(zip(*lists, strict=True)) if n else []


def columns_from_row(table: Table, row: asyncpg.Record | None) -> dict[str, np.ndarray]:
    """Decode one row of ``array_agg`` columns (see ``select_columns_sql``) into numpy arrays."""
    out: dict[str, np.ndarray] = {}
    for i, c in enumerate(table.columns):
        values = row[i] if row is not None else None
        if values is None:
            values = []
        if c.kind == "str":
            out[c.name] = np.array(values, dtype=object)
        else:
            out[c.name] = np.asarray(values, dtype=c.np_type)
    return out
