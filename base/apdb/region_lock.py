"""Sky-region locks: association of two CCDs that could share a DiaObject never overlaps.

Several Association partitions store into one APDB at once. A CCD's association reads the
DiaObjects of its padded footprint, matches, and creates objects for what did not match; two
CCDs whose padded footprints overlap (neighbours across a partition border, or one patch of
sky in two visits) could each create an object for the same star if they ran side by side.
So each CCD holds, from its preload to its commit, PostgreSQL advisory locks on the HEALPix
pixels (order :data:`LOCK_ORDER`) its padded footprint overlaps: CCDs that share sky run one
after the other, exactly as with one Association, and the rest run concurrently. Keys are
taken in ascending order in one statement, so two CCDs never wait on each other in a cycle;
the locks belong to the session and go with its connection if the actor dies.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator

import astropy.units as u
import asyncpg
import numpy as np
from astropy_healpix import HEALPix

from base.db import mapped_errors

from .spatial import Region

#: HEALPix order of the lock pixels (nside 1024, ≈ 3.4′): a CCD of 13′ takes ~60 keys.
LOCK_ORDER = 10


def lock_keys(region: Region, order: int = LOCK_ORDER) -> list[int]:
    """The pixels at ``order`` that the padded region overlaps (a superset), ascending.

    Two regions that share a point share that point's pixel, since a cone search returns
    every pixel that overlaps the cone holding the region.
    """
    ra, dec = region.center
    hp = HEALPix(nside=1 << order, order="nested")
    pix = hp.cone_search_lonlat(ra * u.deg, dec * u.deg, region.radius_deg() * u.deg)
    return sorted({int(p) for p in np.asarray(pix).tolist()})


def namespace(schema: str) -> int:
    """The advisory-lock class id of one APDB schema (a signed 32-bit integer)."""
    h = zlib.crc32(f"apdb region {schema}".encode())
    return h - (1 << 32) if h >= 1 << 31 else h


@contextlib.asynccontextmanager
async def region_lock(pool: asyncpg.Pool, schema: str, region: Region) -> AsyncIterator[None]:
    """Hold the region's pixel locks (waiting for any CCD that holds one) for the block."""
    keys = lock_keys(region)
    ns = namespace(schema)
    async with mapped_errors("APDB region lock"):
        conn = await pool.acquire()
    try:
        async with mapped_errors("APDB region lock"):
            await conn.fetchval(
                "SELECT count(pg_advisory_lock($1, k)) FROM unnest($2::integer[]) AS k",
                ns,
                keys,
            )
        yield
    finally:
        # The APDB's pool does not reset a released connection (``stateless``): the locks are
        # let go here, or the session, and so its locks, ends with the connection.
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()")
        except BaseException as e:
            conn.terminate()
            if not isinstance(e, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                raise
        finally:
            await pool.release(conn)
