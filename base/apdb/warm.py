"""Warm-up of the APDB's binary COPY codecs, run when the Association starts.

Their numba kernels are compiled (or loaded from numba's on-disk cache) then, not inside the
first visit's preload and store. Each table makes a round trip of two rows (every column
given, one of them NULL where it can be), so a codec that no longer reads what it writes
fails the start instead of the first visit.
"""

from __future__ import annotations

import time

import numpy as np

from state.errors import StartupError

from .copyread import decode_copy
from .copywrite import copy_payload
from .schema import Column, Table, tables

_ROWS = 2


def _sample(c: Column) -> np.ndarray:
    if c.kind == "str":
        return np.array(["warm", ""], dtype=object)
    if c.kind == "float":
        return np.array([1.5, np.nan], dtype=c.np_type)
    if c.kind == "bool":
        return np.array([True, False])
    return np.array([7, 0], dtype=c.np_type)


def _round_trip(table: Table) -> None:
    cols = {c.name: _sample(c) for c in table.columns}
    names, payload = copy_payload(table, cols, _ROWS)
    back = decode_copy(payload, table)
    for c in table.columns:
        if c.name not in names or c.pg_type == "timestamp":
            continue
        want, got = cols[c.name], back[c.name]
        same = (
            np.array_equal(want, got, equal_nan=True)
            if c.kind == "float"
            else list(want) == list(got)
        )
        if not same:
            raise StartupError(
                f"the APDB COPY codecs do not read back {table.name}.{c.name}:"
                f" wrote {want!r}, read {got!r}"
            )


def warm_up_codecs() -> float:
    """Round-trip every APDB table through the COPY writer and reader; seconds taken."""
    t0 = time.perf_counter()
    for table in tables().values():
        _round_trip(table)
    return time.perf_counter() - t0
