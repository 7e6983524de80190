"""Association in batch: the prompt path's own step (``base.prompt.association_step``), driven
per sky region in time order, and the checksum a release's outputs are compared by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from base.apdb import Apdb
from base.apdb.schema import q
from base.db import mapped_errors
from base.prompt.association_step import Associated, associate_ccd

#: DiaSource columns a release's checksum covers (what association decides, and the measurement).
CHECKSUM_COLUMNS = ("diaSourceId", "diaObjectId", "visit", "detector", "ra", "dec", "psfFlux")


async def dia_source_checksum(
    apdb: Apdb, keys: Sequence[tuple[int, int]], pool: Any
) -> tuple[str, int]:
    """sha256 of the DiaSources of these CCDs (``CHECKSUM_COLUMNS``, by id) and their count."""
    cols = ", ".join(q(c) for c in CHECKSUM_COLUMNS)
    async with mapped_errors("reprocess checksum"), pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {cols} FROM {q(apdb.schema)}.{q('DiaSource')} s"
            " JOIN unnest($1::bigint[], $2::integer[]) AS k(visit, detector)"
            ' USING (visit, detector) ORDER BY "diaSourceId"',
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
    h = hashlib.sha256()
    digest_rows(h, rows)
    return h.hexdigest(), len(rows)


def digest_rows(h: Any, rows: Sequence[Sequence[Any]]) -> None:
    """Feed ``rows`` to the hash ``h``, floats rounded to 9 decimals (stable across runs)."""
    for r in rows:
        h.update(repr(tuple(round(v, 9) if isinstance(v, float) else v for v in r)).encode())


__all__ = [
    "CHECKSUM_COLUMNS",
    "Associated",
    "associate_ccd",
    "dia_source_checksum",
    "digest_rows",
]
