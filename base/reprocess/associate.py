"""One CCD through association into an APDB, as the prompt Association does it.

The same calls in the same order (padded-footprint preload, ``algorithms.association_run
.associate``, the APDB's idempotent per-(visit, detector) store), without the component
around them: the batch drives them per sky region, in time order.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from algorithms.association_run import AssociationResult, associate
from base.apdb import Apdb, Region
from base.apdb.apdb import Preload
from base.apdb.db import mapped_errors
from base.apdb.schema import q
from base.prompt.requests import CcdResults
from base.reprocess.plan import AssociationParams
from state.errors import InvalidInputError

#: DiaSource columns a release's checksum covers (what association decides, and the measurement).
CHECKSUM_COLUMNS = ("diaSourceId", "diaObjectId", "visit", "detector", "ra", "dec", "psfFlux")


@dataclass
class Associated:
    result: AssociationResult
    preload: Preload
    stored: bool


async def associate_ccd(apdb: Apdb, ccd: CcdResults, params: AssociationParams) -> Associated:
    """Associate and store one CCD; ``stored`` is False when the APDB already held it."""
    region = Region(ccd.footprint_ra, ccd.footprint_dec, params.pad_arcsec)
    try:
        preload = await apdb.preload(region, ccd.midpoint_mjd, params.history_days)
        result = await asyncio.to_thread(
            associate,
            ccd.sources,
            preload.objects,
            preload.sources,
            preload.forced_sources,
            ccd.midpoint_mjd,
            radius_arcsec=params.radius_arcsec,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise InvalidInputError(f"visit {ccd.visit} detector {ccd.detector}: {e}") from e
    store = await apdb.store(
        ccd.visit,
        ccd.detector,
        result.sources,
        result.objects,
        ccd.forced_sources,
        result.ss_sources,
    )
    return Associated(result, preload, store.stored)


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
    for r in rows:
        h.update(repr(tuple(round(v, 9) if isinstance(v, float) else v for v in r)).encode())
    return h.hexdigest(), len(rows)
