"""Several CCDs' preload, history and store in one APDB transaction (group commit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg
import numpy as np

from algorithms.association import Columns
from base.db import mapped_errors

from . import outbox as outbox_mod
from .copyread import fetch_columns
from .history import history_reads
from .region_lock import lock_keys, namespace
from .spatial import Region

if TYPE_CHECKING:
    from .apdb import Apdb, Preload, StoreResult


class ApdbTransaction:
    """An :class:`Apdb`'s preload, history and store on the one connection of an open
    transaction (``Apdb.transaction``), with the region locks as transaction-level advisory
    locks: held until it ends, released by its commit or rollback."""

    def __init__(self, apdb: Apdb, conn: asyncpg.Connection) -> None:
        self._apdb = apdb
        self._conn = conn
        #: The (visit, detector) whose alert outbox rows this transaction wrote.
        self.outboxed: list[tuple[int, int]] = []
        #: When what it stored was stored (TAI), set at its commit (``Apdb._seal``).
        self.stored_tai: float | None = None

    async def lock_regions(self, regions: Sequence[Region]) -> None:
        """Wait for and hold the region locks (:mod:`.region_lock`) of all ``regions``, in one
        statement, keys ascending (no cycle with another holder), until the transaction ends."""
        keys = sorted({k for r in regions for k in lock_keys(r)})
        async with mapped_errors("APDB region lock"):
            await self._conn.fetchval(
                "SELECT count(pg_advisory_xact_lock($1, k)) FROM unnest($2::integer[]) AS k",
                namespace(self._apdb.schema),
                keys,
            )

    async def _read_all(self, reads: list[tuple[str, str]]) -> list[Columns]:
        tables = self._apdb._tables
        async with mapped_errors("APDB preload"):
            return [await fetch_columns(self._conn, tables[n], sql) for n, sql in reads]

    async def preload(
        self, region: Region, mjd: float, history_days: float = 365.0, *, history: bool = True
    ) -> Preload:
        """:meth:`Apdb.preload`, one table after the other on this transaction's connection."""
        reads = self._apdb._preload_reads(region, mjd, history_days, history)
        return self._apdb._preloaded(region, await self._read_all(reads))

    async def read_history(
        self, object_ids: np.ndarray, mjd: float, history_days: float = 365.0
    ) -> tuple[Columns, Columns]:
        """:meth:`Apdb.read_history` on this transaction's connection."""
        reads = history_reads(self._apdb._t, object_ids, mjd, history_days)
        if not reads:
            return self._apdb._empty("DiaSource"), self._apdb._empty("DiaForcedSource")
        sources, forced = await self._read_all(reads)
        return sources, forced

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
        """:meth:`Apdb.store` inside this transaction (committed with it)."""
        write = self._apdb._prepare_store(sources, objects, forced_sources, ss_sources)
        async with mapped_errors(f"APDB store {visit}/{detector}"):
            result = await self._apdb._store_on(
                self._conn, visit, detector, objects, write, handoff
            )
        if result.stored and handoff is not None:
            self.outboxed.append((visit, detector))
        return result
