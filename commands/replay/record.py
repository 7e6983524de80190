"""What the durable record says about a night: the registry, the CCD outcomes, the alerts.

Events are notifications; completion is judged from what was written. A CCD has ended when
its outcome row says failed/abandoned/skipped, or processed with its alert count recorded by
AlertPublisher. This is what lets a resumed replay (whose components ignore, idempotently,
the raws an earlier run already took in) see the CCDs that earlier run finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from base.db import mapped_errors
from base.prompt.settings import CcdProcessorSettings
from commands.replay.night_system import PROCESSOR_CLASS
from config.system import SystemConfig

Ccd = tuple[int, int]
_INGEST_CLASS = "base.ingest:Ingest"


@dataclass(frozen=True)
class NightRecord:
    ingested: frozenset[Ccd] = frozenset()
    processed: frozenset[Ccd] = frozenset()
    failed: dict[Ccd, str] = field(default_factory=dict)
    #: Alerts published per CCD (AlertPublisher's count).
    published: dict[Ccd, int] = field(default_factory=dict)

    @property
    def ended(self) -> set[Ccd]:
        return (set(self.processed) & set(self.published)) | set(self.failed)

    @property
    def alerts(self) -> int:
        return sum(self.published.values())


def _key(row: asyncpg.Record) -> Ccd:
    return int(row["visit"]), int(row["detector"])


def _setting(config: SystemConfig, cls: str, key: str, default: str) -> str:
    for spec in config.components:
        if spec.cls == cls:
            return str(spec.settings.get(key, default))
    return default


class NightRecordReader:
    """Reads :class:`NightRecord` for a set of visits from the system's PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, config: SystemConfig) -> None:
        self._pool = pool
        defaults = CcdProcessorSettings()
        self._registry = _setting(
            config, _INGEST_CLASS, "registry_schema", defaults.registry_schema
        )
        self._records = _setting(config, PROCESSOR_CLASS, "records_schema", defaults.records_schema)

    @staticmethod
    async def _rows(conn: asyncpg.Connection, sql: str, visits: list[int]) -> list[asyncpg.Record]:
        """The rows of ``sql``; none while the table does not exist yet (not migrated)."""
        try:
            return list(await conn.fetch(sql, visits))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return []

    async def read(self, visits: list[int]) -> NightRecord:
        # The mapping covers the connection's release too: a server that died mid-read fails
        # there (resetting the connection), and that is an outage to wait out, not a crash.
        async with mapped_errors("reading the night's records"), self._pool.acquire() as conn:
            raws = await self._rows(
                conn,
                f'SELECT visit, detector FROM "{self._registry}".raws'
                " WHERE visit = ANY($1::bigint[])",
                visits,
            )
            outcomes = await self._rows(
                conn,
                "SELECT visit, detector, status, failure_type, reason"
                f' FROM "{self._records}".ccd_outcome WHERE visit = ANY($1::bigint[])',
                visits,
            )
            alerts = await self._rows(
                conn,
                f'SELECT visit, detector, n_alerts FROM "{self._records}".ccd_alerts'
                " WHERE visit = ANY($1::bigint[])",
                visits,
            )
        return NightRecord(
            ingested=frozenset(_key(r) for r in raws),
            processed=frozenset(_key(r) for r in outcomes if r["status"] == "processed"),
            failed={
                _key(r): f"{r['failure_type']}: {r['reason']}"
                for r in outcomes
                if r["status"] != "processed"
            },
            published={_key(r): int(r["n_alerts"]) for r in alerts},
        )
