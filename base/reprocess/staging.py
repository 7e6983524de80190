"""Per-CCD results of a release kept in its schema until they are associated (and after).

So that a killed run never reprocesses a CCD whose results were stored, and the association
of a region can be redone from them. Keyed by (visit, detector); a rerun replaces the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from base.db import Migration, Store, mapped_errors, migrate, q
from base.prompt.requests import CcdResults
from base.reprocess.work import unpack
from state.errors import InvalidInputError

TABLE = "reprocess_ccd"


#: Frozen DDL: append, never edit a released step.
STORE = Store(
    "reprocess-staging",
    (
        Migration(
            1,
            "reprocess_ccd",
            f"""
CREATE TABLE IF NOT EXISTS {{schema}}.{TABLE} (
    visit bigint NOT NULL, detector integer NOT NULL, midpoint_mjd float8 NOT NULL,
    region bigint NOT NULL, checksum text NOT NULL, n_sources integer NOT NULL,
    payload bytea NOT NULL, PRIMARY KEY (visit, detector));
""",
        ),
    ),
)


class Staging:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._t = f"{q(schema)}.{TABLE}"

    @classmethod
    async def connect(cls, pool: asyncpg.Pool, schema: str) -> Staging:
        async with mapped_errors("reprocess staging"), pool.acquire() as conn:
            await migrate(conn, schema, STORE)
        return cls(pool, schema)

    async def put(
        self, visit: int, detector: int, mjd: float, region: int, checksum: str, n: int, data: bytes
    ) -> None:
        async with mapped_errors("reprocess staging put"), self._pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO {self._t} VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (visit, detector) DO UPDATE SET midpoint_mjd = EXCLUDED.midpoint_mjd,"
                " region = EXCLUDED.region, checksum = EXCLUDED.checksum,"
                " n_sources = EXCLUDED.n_sources, payload = EXCLUDED.payload",
                visit,
                detector,
                mjd,
                region,
                checksum,
                n,
                data,
            )

    async def regions(self, keys: Sequence[tuple[int, int]]) -> dict[int, list[tuple[int, int]]]:
        """region -> its CCDs in time order, for the given (visit, detector) keys."""
        async with mapped_errors("reprocess staging regions"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT s.visit, s.detector, s.region FROM {self._t} s"
                " JOIN unnest($1::bigint[], $2::integer[]) AS k(visit, detector)"
                " USING (visit, detector) ORDER BY region, midpoint_mjd, visit, detector",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        out: dict[int, list[tuple[int, int]]] = {}
        for r in rows:
            out.setdefault(int(r["region"]), []).append((int(r["visit"]), int(r["detector"])))
        return out

    async def get(self, visit: int, detector: int) -> CcdResults:
        async with mapped_errors("reprocess staging get"), self._pool.acquire() as conn:
            payload = await conn.fetchval(
                f"SELECT payload FROM {self._t} WHERE visit = $1 AND detector = $2",
                visit,
                detector,
            )
        if payload is None:
            raise InvalidInputError(f"no stored results of visit {visit} detector {detector}")
        return unpack(bytes(payload))
