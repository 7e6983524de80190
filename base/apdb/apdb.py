"""The Alert Production Database on PostgreSQL (asyncpg): region preload and per-CCD store.

* ``preload(region, mjd)``: the latest DiaObjects whose position lies in a padded CCD footprint,
  plus their DiaSources and DiaForcedSources of the last ``history_days`` (DMS-REQ-0319).
* ``store(visit, detector, ...)``: one transaction per (visit, detector) with a ledger row
  inserted first; if the row already exists the call adds nothing and says so (a retry after a
  lost acknowledgement is harmless). Rows go in as binary COPY (``copywrite.py``).
  DiaObject is versioned: the previous version gets ``validityEndMjdTai`` and a new version is
  appended, and DiaObjectLast (one row per object, indexed by ``pixelId``) is updated in place;
  concurrent writers of one object are serialized on its DiaObjectLast row (``store.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib import resources

import asyncpg
import numpy as np

from algorithms.association import Columns
from base.db import Migration, Store, connect_pool, mapped_errors, migrate
from state.clock import tai_now
from state.errors import ConfigurationError

from . import outbox as outbox_mod
from . import schema as sch
from . import store as store_mod
from .copyread import decode_copy, fetch_columns, int_array
from .copywrite import copy_payload
from .history import history_reads
from .region_lock import region_lock
from .rows import columns_from_row, records
from .schema import q
from .spatial import ORDER, Region, pixel_ids
from .transaction import ApdbTransaction

LEDGER = "apdb_visit_detector"
#: Extra margin of the history read: a source may lie this far outside its object's region.
HISTORY_PAD_ARCSEC = 5.0


#: A binary COPY stream of no rows.
_EMPTY_COPY = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + b"\xff\xff"

#: The apdb.yaml version the frozen DDL of :data:`STORE` was generated from.
FROZEN_YAML_VERSION = "10.0.0"
_SQL = resources.files("base.apdb").joinpath("sql")

#: The APDB's tables; migrations are frozen DDL: append, never edit a released step.
_MIGRATIONS = (
    Migration(
        1,
        "apdb.yaml tables, per-CCD ledger, metadata",
        _SQL.joinpath("0001_apdb_tables.sql").read_text()
        + f"""
CREATE TABLE IF NOT EXISTS {{schema}}.{LEDGER} (
    visit bigint NOT NULL, detector integer NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now(),
    n_dia_sources integer NOT NULL, n_dia_objects integer NOT NULL,
    n_forced_sources integer NOT NULL, n_ss_sources integer NOT NULL,
    PRIMARY KEY (visit, detector));
CREATE TABLE IF NOT EXISTS {{schema}}.metadata (name text PRIMARY KEY, value text);
INSERT INTO {{schema}}.metadata VALUES ('apdb.yaml version', '{FROZEN_YAML_VERSION}')
    ON CONFLICT (name) DO NOTHING;
""",
    ),
    Migration(
        2,
        "room on DiaObject and DiaObjectLast pages for each row's in-place update (HOT)",
        _SQL.joinpath("0002_update_room.sql").read_text(),
    ),
)


def store_spec() -> Store:
    """The APDB store, its frozen parameters taken from the installed code and apdb.yaml."""
    installed = sch.schema_version()
    if installed != FROZEN_YAML_VERSION:
        raise ConfigurationError(
            f"the installed apdb.yaml is version {installed}, the APDB's frozen DDL is from"
            f" {FROZEN_YAML_VERSION}: add a migration for the new version"
        )
    return Store(
        "apdb",
        _MIGRATIONS,
        code_version="1.0",
        params={"apdb_yaml_version": installed, "healpix_order": str(ORDER)},
    )


def _member(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_ids)`` by binary search (a fifth of its time for a preload)."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return sorted_ids[at] == values


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
    #: When it was stored (TAI): stamped by its transaction's last statement, just before the
    #: COMMIT (:meth:`Apdb._seal`); None in an open ``ApdbTransaction`` (see its ``stored_tai``).
    stored_tai: float | None = None


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
        """Open a pool, check the schema against this code and bring it up to date.

        A schema recorded by incompatible code (another schema version, HEALPix order or
        apdb.yaml version) raises ``IncompatibleDatabaseError``.
        """
        spec = store_spec()
        # Stateless: no reset round trip after each of a CCD's ~8 acquisitions; the one user
        # of session state, the region lock, lets its advisory locks go itself.
        pool = await connect_pool(
            dsn, min_size=min_size, max_size=max_size, what="APDB", stateless=True
        )
        try:
            async with mapped_errors("APDB connect"), pool.acquire() as conn:
                await migrate(conn, schema, spec)
                await outbox_mod.ensure(conn, schema)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, schema)

    async def close(self) -> None:
        await self._pool.close()

    def region_lock(self, region: Region) -> contextlib.AbstractAsyncContextManager[None]:
        """Exclusive use of ``region``'s sky against other writers (:mod:`.region_lock`)."""
        return region_lock(self._pool, self.schema, region)

    def _t(self, name: str) -> str:
        return f"{q(self.schema)}.{q(name)}"

    async def schema_version(self) -> int:
        async with mapped_errors("APDB schema_version"), self._pool.acquire() as conn:
            v = await conn.fetchval(
                f"SELECT max(version) FROM {q(self.schema)}.schema_version WHERE component='apdb'"
            )
        return int(v or 0)

    # ---------------------------------------------------------------- reads
    async def preload(
        self, region: Region, mjd: float, history_days: float = 365.0, *, history: bool = True
    ) -> Preload:
        """Latest DiaObjects in ``region`` and their ``history_days`` of sources before ``mjd``.

        With ``history=False`` only the objects are read (the sources and forced sources come
        back empty): association matches against the objects alone, and the history of the few
        it matched is then read by :meth:`read_history` (a full focal plane matches ~7 % of the
        objects it preloads).

        Every table is read by ``pixelId`` ranges (index range scans, sequential once the
        tables are clustered, see :meth:`cluster`); the history by the ranges of the region
        grown by :data:`HISTORY_PAD_ARCSEC`, then kept for the objects found. The objects are
        read by the same ranges (a ring a few arcseconds wider, cut by the exact polygon test
        below), so the covering ranges are computed once. The three tables are read at once,
        each on its own connection, and large streams are decoded off the event loop.
        """
        reads = self._preload_reads(region, mjd, history_days, history)
        return self._preloaded(region, await self._read_all(reads))

    def _preload_reads(
        self, region: Region, mjd: float, history_days: float, history: bool
    ) -> list[tuple[str, str]]:
        """(table, query) of each read of a preload."""
        since = float(mjd - history_days)
        wider = Region(region.ra, region.dec, region.pad_arcsec + HISTORY_PAD_ARCSEC)
        lo, hi = wider.pixel_ranges()
        when = f' AND o."midpointMjdTai" > {since!r}'
        names = ("DiaObjectLast", "DiaSource", "DiaForcedSource")[: 3 if history else 1]
        return [
            (name,
             f"SELECT o.* FROM unnest({int_array(lo)}, {int_array(hi)}) AS r(lo, hi)"
             f" CROSS JOIN LATERAL (SELECT * FROM {self._t(name)} o"
             f'  WHERE o."pixelId" >= r.lo AND o."pixelId" < r.hi'
             f"{when if name != 'DiaObjectLast' else ''}) o")
            for name in names
        ]  # fmt: skip

    def _preloaded(self, region: Region, read: list[Columns]) -> Preload:
        """The preload from its reads: the objects cut by the exact padded polygon and sorted
        by ``pixelId``, the history kept for those objects (empty where not read)."""
        objects, sources, forced = read + [
            self._empty(name) for name in ("DiaSource", "DiaForcedSource")[len(read) - 1 :]
        ]
        inside = np.flatnonzero(region.contains(objects["ra"], objects["dec"]))
        inside = inside[np.argsort(objects["pixelId"][inside], kind="stable")]
        objects = {k: v[inside] for k, v in objects.items()}
        ids = np.sort(objects["diaObjectId"])
        keep = _member(sources["diaObjectId"], ids)
        sources = {k: v[keep] for k, v in sources.items()}
        keep = _member(forced["diaObjectId"], ids)
        forced = {k: v[keep] for k, v in forced.items()}
        return Preload(objects, sources, forced)

    async def read_history(
        self, object_ids: np.ndarray, mjd: float, history_days: float = 365.0
    ) -> tuple[Columns, Columns]:
        """The DiaSources and DiaForcedSources of ``object_ids`` of the ``history_days`` before
        ``mjd`` (the history :meth:`preload` gives, for just these objects), read by their
        ``diaObjectId`` index, the two tables at once."""
        reads = history_reads(self._t, object_ids, mjd, history_days)
        if not reads:
            return self._empty("DiaSource"), self._empty("DiaForcedSource")
        sources, forced = await self._read_all(reads)
        return sources, forced

    def _empty(self, name: str) -> Columns:
        """No rows of table ``name``: every column, empty, as a read of nothing decodes."""
        return decode_copy(_EMPTY_COPY, self._tables[name])

    async def _read_all(self, reads: list[tuple[str, str]]) -> list[Columns]:
        """Each (table, query) of ``reads`` at once, each on a connection of its own."""
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._read(name, sql)) for name, sql in reads]
        except ExceptionGroup as eg:
            raise eg.exceptions[0] from eg
        return [t.result() for t in tasks]

    async def _read(self, name: str, sql: str) -> Columns:
        """One table's rows selected by ``sql``, on a connection of its own (the reads of a
        preload run at once: the server produces one stream while another is decoded)."""
        async with mapped_errors("APDB preload"), self._pool.acquire() as conn:
            return await fetch_columns(conn, self._tables[name], sql)

    async def cluster(self) -> None:
        """Daytime maintenance: order the spatial tables physically by ``pixelId`` (CLUSTER) and
        refresh the planner's statistics, so a region read touches contiguous pages."""
        async with mapped_errors("APDB cluster"), self._pool.acquire() as conn:
            for name in ("DiaObjectLast", "DiaSource", "DiaForcedSource"):
                index = q(f"idx_{name}_pixelId")
                await conn.execute(f"CLUSTER {self._t(name)} USING {index}", timeout=None)
                await conn.execute(f"ANALYZE {self._t(name)}")

    async def is_stored(self, visit: int, detector: int) -> bool:
        async with mapped_errors("APDB is_stored"), self._pool.acquire() as conn:
            found = await conn.fetchval(
                f"SELECT 1 FROM {self._t(LEDGER)} WHERE visit = $1 AND detector = $2",
                visit,
                detector,
            )
        return bool(found)

    async def earlier_store(self, visit: int, detector: int) -> dict[str, object]:
        """What an earlier store of (visit, detector) recorded: its DIASource count and the
        ``associated``/``apdbStored`` stage times its alert hand-off carried (a retry answers
        with these, so the CCD's outcome counts its DIASources)."""
        async with mapped_errors("APDB earlier_store"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT l.n_dia_sources, o.meta->'stages' AS stages FROM {self._t(LEDGER)} l"
                f" LEFT JOIN {q(self.schema)}.{outbox_mod.TABLE} o USING (visit, detector)"
                " WHERE l.visit = $1 AND l.detector = $2",
                visit,
                detector,
            )
        if row is None:
            return {}
        stages = json.loads(row["stages"]) if row["stages"] else {}
        kept = {k: float(v) for k, v in stages.items() if k in ("associated", "apdbStored")}
        return {"nDiaSources": int(row["n_dia_sources"]), "stages": kept}

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
        handoff: outbox_mod.HandoffBuilder | None = None,
    ) -> StoreResult:
        """Store one CCD's results atomically; a repeat for the same (visit, detector) is a no-op.

        ``handoff``, if given, builds the CCD's alert hand-off once the (visit, detector) is
        claimed; it is written to the alert outbox in the same transaction (:mod:`.outbox`).

        ``objects`` are the new versions of every DiaObject touched by this CCD (their
        ``validityStartMjdTai`` set); ``pixelId`` is computed here for every spatial table.
        Concurrent stores touching the same DiaObjects are serialized per object and leave
        exactly one open version of each (see :mod:`base.apdb.store`).
        """
        write = self._prepare_store(sources, objects, forced_sources, ss_sources)
        async with (
            mapped_errors(f"APDB store {visit}/{detector}"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            result = await self._store_on(conn, visit, detector, objects, write, handoff)
            if not result.stored:
                return result
            tai = await self._seal(conn, [(visit, detector)] if handoff is not None else [])
        return dataclasses.replace(result, stored_tai=tai)

    async def _seal(self, conn: asyncpg.Connection, outboxed: list[tuple[int, int]]) -> float:
        """The ``apdbStored`` time of what a store transaction stored: taken after its last
        write, just before its COMMIT, and written into the ``outboxed`` CCDs' outbox rows by
        its last statement (so the alert hand-off carries it; docs/apdb.md)."""
        tai = tai_now()
        if outboxed:
            await outbox_mod.stamp_stored(conn, self.schema, outboxed, tai)
        return tai

    def _prepare_store(
        self,
        sources: Columns,
        objects: Columns,
        forced_sources: Columns | None,
        ss_sources: Columns | None,
    ) -> _Write:
        """A store's COPY streams and counts, built before its transaction."""
        tables = self._tables
        n_src = len(sources["ra"])
        n_obj = len(objects.get("ra", ()))
        forced_sources = forced_sources or {}
        ss_sources = ss_sources or {}
        n_fs = len(forced_sources.get("ra", ()))
        n_ss = len(ss_sources.get("diaSourceId", ()))
        prepared: list[tuple[str, list[str], bytes]] = []
        for name, cols, n in (
            ("DiaSource", sources, n_src),
            ("DiaForcedSource", forced_sources, n_fs),
            ("SSSource", ss_sources, n_ss),
        ):
            if n == 0:
                continue
            if name in sch.SPATIAL_TABLES:
                cols = {**cols, "pixelId": pixel_ids(cols["ra"], cols["dec"])}  # noqa: PLW2901
            names, payload = copy_payload(tables[name], cols, n)
            prepared.append((name, names, payload))
        versions = store_mod.object_records(objects) if n_obj else ([], b"")
        counts = {"DiaSource": n_src, "DiaObject": n_obj, "DiaForcedSource": n_fs, "SSSource": n_ss}
        return _Write(prepared, versions, counts)

    async def _store_on(
        self,
        conn: asyncpg.Connection,
        visit: int,
        detector: int,
        objects: Columns,
        write: _Write,
        handoff: outbox_mod.HandoffBuilder | None,
    ) -> StoreResult:
        """:meth:`store`'s statements, inside the caller's transaction on ``conn``."""
        counts = dict(write.counts)
        versions = write.versions
        obj_ids = np.asarray(objects.get("diaObjectId", []), dtype=np.int64).tolist()
        claimed = await conn.fetchval(
                f"INSERT INTO {self._t(LEDGER)} (visit, detector, n_dia_sources,"
                " n_dia_objects, n_forced_sources, n_ss_sources) VALUES ($1,$2,$3,$4,$5,$6)"
                " ON CONFLICT (visit, detector) DO NOTHING RETURNING 1",
                visit, detector, counts["DiaSource"], counts["DiaObject"],
                counts["DiaForcedSource"], counts["SSSource"],
            )  # fmt: skip
        if not claimed:
            return StoreResult(visit, detector, stored=False)
        if handoff is not None:
            await outbox_mod.put(conn, self.schema, visit, detector, handoff())
        current = (
            await store_mod.lock_current(conn, self._t("DiaObjectLast"), obj_ids) if obj_ids else {}
        )
        for name, names, payload in write.prepared:
            await conn.copy_to_table(
                name, source=io.BytesIO(payload), schema_name=self.schema, columns=names,
                format="binary",
            )  # fmt: skip
        if obj_ids:
            late = store_mod.contended(objects, current)
            if late.any():
                objects = await store_mod.recompute(conn, self.schema, objects, late, current)
                versions = store_mod.object_records(objects)
                counts["contended"] = int(late.sum())
            await store_mod.write_versions(conn, self.schema, objects, versions, late)
        return StoreResult(visit, detector, stored=True, counts=counts)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[ApdbTransaction]:
        """One transaction for several CCDs (group commit): what its :class:`ApdbTransaction`
        reads sees what it stored before; all of it commits at the end of the block, or none
        of it if the block raises."""
        async with (
            mapped_errors("APDB transaction"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            tx = ApdbTransaction(self, conn)
            yield tx
            tx.stored_tai = await self._seal(conn, tx.outboxed)


@dataclass(frozen=True)
class _Write:
    prepared: list[tuple[str, list[str], bytes]]  # (table, columns, binary COPY)
    versions: tuple[list[str], bytes]  # the new DiaObject versions' COPY
    counts: dict[str, int]
