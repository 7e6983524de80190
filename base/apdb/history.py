"""The history read of association's matched objects: their DiaSources and DiaForcedSources
of a window before the visit, by their ``diaObjectId`` index (after association, so only the
few objects a visit matched are read, not the whole preloaded region's)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .copyread import int_array

#: The tables the history is read from.
HISTORY_TABLES = ("DiaSource", "DiaForcedSource")


def history_reads(
    table: Callable[[str], str], object_ids: np.ndarray, mjd: float, history_days: float
) -> list[tuple[str, str]]:
    """(table, query) of each read of the history of ``object_ids``; none for no objects.
    ``table`` gives a table's qualified name."""
    ids = np.unique(np.asarray(object_ids, dtype=np.int64))
    if len(ids) == 0:
        return []
    since = float(mjd - history_days)
    where = f' WHERE o."diaObjectId" = ANY({int_array(ids)}) AND o."midpointMjdTai" > {since!r}'
    return [(name, f"SELECT o.* FROM {table(name)} o{where}") for name in HISTORY_TABLES]
