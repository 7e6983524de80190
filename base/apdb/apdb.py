"""The Alert Production Database on PostgreSQL (asyncpg): region preload and per-CCD store.

* ``preload(region, mjd)``: the latest DiaObjects whose position lies in a padded CCD footprint,
  plus their DiaSources and DiaForcedSources of the last ``history_days`` (DMS-REQ-0319).
* ``store(visit, detector, ...)``: one transaction per (visit, detector) with a ledger row
  inserted first; if the row already exists the call adds nothing and says so (a retry after a
  lost acknowledgement is harmless). Rows go in with COPY (``copy_records_to_table``).
  DiaObject is versioned: the previous version gets ``validityEndMjdTai`` and a new version is
  appended, and DiaObjectLast (one row per object, indexed by ``pixelId``) is replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np

from algorithms.association import Columns

from . import schema as sch
from .db import columns_from_row, mapped_errors, migrate, records
from .schema import q
from .spatial import Region, pixel_ids

LEDGER = "apdb_visit_detector"


async def _create_tables(conn: asyncpg.Connection, schema: str) -> None:
    for table in sch.tables().values():
        for stmt in sch.create_table_sql(table, schema):
            await conn.execute(stmt)
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {q(schema)}.{LEDGER} ("
        " visit bigint NOT NULL, detector integer NOT NULL,"
        " stored_at timestamptz NOT NULL DEFAULT now(),"
        " n_dia_sources integer NOT NULL, n_dia_objects integer NOT NULL,"
        " n_forced_sources integer NOT NULL, n_ss_sources integer NOT NULL,"
        " PRIMARY KEY (visit, detector))"
    )
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {q(schema)}.metadata (name text PRIMARY KEY, value text)"
    )
    await conn.execute(
        f"INSERT INTO {q(schema)}.metadata VALUES ('apdb.yaml version', $1)"
        " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        sch.schema_version(),
    )


#: Versioned schema migrations of the APDB; append, never edit a released step.
MIGRATIONS = (_create_tables,)


@dataclass(frozen=True)
class Preload:
    """What one CCD's processing needs from the APDB before its DIASources exist."""

    objects: Columns  # latest DiaObjects in the padded footprint, sorted by pixelId
    sources: Columns  # their DiaSources of the history window
    forced_sources: Columns  # their DiaForcedSources of the history window


@dataclass(frozen=True)
class StoreResult:
    visit: int
    detector: int
    stored: bool  # False when this (visit, detector) had already been stored: nothing added
    counts: dict[str, int] = field(default_factory=dict)


class Apdb:
    """One APDB in one PostgreSQL schema, over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema
        self._tables = sch.tables()

    @classmethod
    async def connect(
        cls, dsn: str, schema: str = "apdb", min_size: int = 1, max_size: int = 4
    ) -> Apdb:
        """Open a pool and bring the schema up to date (migrations)."""
        async with mapped_errors("APDB connect"):
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
            async with pool.acquire() as conn:
                await migrate(conn, schema, "apdb", MIGRATIONS)
        return cls(pool, schema)

    async def close(self) -> None:
        await self._pool.close()

    def _t(self, name: str) -> str:
        return f"{q(self.schema)}.{q(name)}"

    async def schema_version(self) -> int:
        async with mapped_errors("APDB schema_version"), self._pool.acquire() as conn:
            v = await conn.fetchval(
                f"SELECT max(version) FROM {q(self.schema)}.schema_version WHERE component='apdb'"
            )
        return int(v or 0)

    # ---------------------------------------------------------------- reads
    async def preload(self, region: Region, mjd: float, history_days: float = 365.0) -> Preload:
        """Latest DiaObjects in ``region`` and their ``history_days`` of sources before ``mjd``."""
        lo, hi = region.pixel_ranges()
        obj_t = self._tables["DiaObjectLast"]
        async with mapped_errors("APDB preload"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {sch.select_columns_sql(obj_t, 'o')} FROM ("
                f" SELECT o.* FROM {self._t('DiaObjectLast')} o"
                " JOIN unnest($1::bigint[], $2::bigint[]) AS r(lo, hi)"
                ' ON o."pixelId" >= r.lo AND o."pixelId" < r.hi'
                ' ORDER BY o."pixelId") o',
                lo.tolist(),
                hi.tolist(),
            )
            objects = columns_from_row(obj_t, row)
            inside = region.contains(objects["ra"], objects["dec"])
            objects = {k: v[inside] for k, v in objects.items()}
            ids = objects["diaObjectId"].tolist()
            since = mjd - history_days
            sources = await self._history(conn, "DiaSource", ids, since)
            forced = await self._history(conn, "DiaForcedSource", ids, since)
        return Preload(objects, sources, forced)

    async def _history(
        self, conn: asyncpg.Connection, name: str, ids: list[int], since: float
    ) -> Columns:
        t = self._tables[name]
        row = await conn.fetchrow(
            f"SELECT {sch.select_columns_sql(t)} FROM {self._t(name)}"
            ' WHERE "diaObjectId" = ANY($1::bigint[]) AND "midpointMjdTai" > $2',
            ids,
            since,
        )
        return columns_from_row(t, row)

    async def is_stored(self, visit: int, detector: int) -> bool:
        async with mapped_errors("APDB is_stored"), self._pool.acquire() as conn:
            found = await conn.fetchval(
                f"SELECT 1 FROM {self._t(LEDGER)} WHERE visit = $1 AND detector = $2",
                visit,
                detector,
            )
        return bool(found)

    async def count(self, name: str) -> int:
        async with mapped_errors("APDB count"), self._pool.acquire() as conn:
            return int(await conn.fetchval(f"SELECT count(*) FROM {self._t(name)}"))

    async def fetch_ss_objects(self, ids: Sequence[int]) -> Columns:
        t = self._tables["SSObject"]
        async with mapped_errors("APDB fetch_ss_objects"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {sch.select_columns_sql(t)} FROM {self._t('SSObject')}"
                ' WHERE "ssObjectId" = ANY($1::bigint[])',
                list(ids),
            )
        return columns_from_row(t, row)

    # ---------------------------------------------------------------- writes
    async def store_ss_objects(self, ss_objects: Columns) -> int:
        """Insert or replace SSObjects (the daytime Solar System Processing output)."""
        n = len(ss_objects["ssObjectId"])
        names, rows = records(self._tables["SSObject"], ss_objects, n)
        async with (
            mapped_errors("APDB store_ss_objects"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute(
                f'DELETE FROM {self._t("SSObject")} WHERE "ssObjectId" = ANY($1::bigint[])',
                np.asarray(ss_objects["ssObjectId"]).tolist(),
            )
            await conn.copy_records_to_table(
                "SSObject", schema_name=self.schema, columns=names, records=rows
            )
        return n

    async def store(
        self,
        visit: int,
        detector: int,
        sources: Columns,
        objects: Columns,
        forced_sources: Columns | None = None,
        ss_sources: Columns | None = None,
    ) -> StoreResult:
        """Store one CCD's results atomically; a repeat for the same (visit, detector) is a no-op.

        ``objects`` are the new versions of every DiaObject touched by this CCD (their
        ``validityStartMjdTai`` set); ``pixelId`` is computed here for every spatial table.
        """
        tables = self._tables
        n_src = len(sources["ra"])
        n_obj = len(objects["ra"])
        forced_sources = forced_sources or {}
        ss_sources = ss_sources or {}
        n_fs = len(forced_sources.get("ra", ()))
        n_ss = len(ss_sources.get("diaSourceId", ()))
        prepared: list[tuple[str, list[str], list[tuple[Any, ...]]]] = []
        for name, cols, n in (
            ("DiaObject", objects, n_obj),
            ("DiaObjectLast", objects, n_obj),
            ("DiaSource", sources, n_src),
            ("DiaForcedSource", forced_sources, n_fs),
            ("SSSource", ss_sources, n_ss),
        ):
            if n == 0:
                continue
            if name in sch.SPATIAL_TABLES:
                cols = {**cols, "pixelId": pixel_ids(cols["ra"], cols["dec"])}  # noqa: PLW2901
            names, rows = records(tables[name], cols, n)
            prepared.append((name, names, rows))
        obj_ids = np.asarray(objects.get("diaObjectId", []), dtype=np.int64).tolist()
        counts = {"DiaSource": n_src, "DiaObject": n_obj, "DiaForcedSource": n_fs, "SSSource": n_ss}
        async with (
            mapped_errors(f"APDB store {visit}/{detector}"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            claimed = await conn.fetchval(
                    f"INSERT INTO {self._t(LEDGER)} (visit, detector, n_dia_sources,"
                    " n_dia_objects, n_forced_sources, n_ss_sources) VALUES ($1,$2,$3,$4,$5,$6)"
                    " ON CONFLICT (visit, detector) DO NOTHING RETURNING 1",
                    visit, detector, n_src, n_obj, n_fs, n_ss,
                )  # fmt: skip
            if not claimed:
                return StoreResult(visit, detector, stored=False)
            if obj_ids:
                await self._retire(conn, obj_ids, objects)
            for name, names, rows in prepared:
                await conn.copy_records_to_table(
                    name, schema_name=self.schema, columns=names, records=rows
                )
        return StoreResult(visit, detector, stored=True, counts=counts)

    async def _retire(self, conn: asyncpg.Connection, ids: list[int], objects: Columns) -> None:
        """Close the open DiaObject versions of ``ids`` and drop their DiaObjectLast rows."""
        start = np.asarray(objects["validityStartMjdTai"], dtype=np.float64).tolist()
        await conn.execute(
            f'UPDATE {self._t("DiaObject")} d SET "validityEndMjdTai" = u.t'
            " FROM unnest($1::bigint[], $2::float8[]) AS u(id, t)"
            ' WHERE d."diaObjectId" = u.id AND d."validityEndMjdTai" IS NULL',
            ids,
            start,
        )
        # Lock first, then delete in a new statement: a concurrent writer of the same object
        # waits here, and its DELETE then sees (and removes) the row this one inserts.
        await conn.execute(
            f'SELECT 1 FROM {self._t("DiaObjectLast")} WHERE "diaObjectId" = ANY($1::bigint[])'
            ' ORDER BY "diaObjectId" FOR UPDATE',
            ids,
        )
        await conn.execute(
            f'DELETE FROM {self._t("DiaObjectLast")} WHERE "diaObjectId" = ANY($1::bigint[])',
            ids,
        )
