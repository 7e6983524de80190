"""The reprocessing ledger in PostgreSQL: which units of which release are done, exactly once.

Tables in schema ``reprocess`` (the frozen migrations of :data:`STORE`, see ``base.db``):

* ``release`` -- one row per release name: its numeric id (the ``IdPacker`` release; a
  release id above 0 belongs to one name only, so two releases never mint the same ids; 0 is
  prompt processing, shared by the catch-up runs of every night), the output schema, the
  configuration hash of its latest run, and run times/status.
* ``unit`` -- (release, unit) -> kind (``ccd`` or ``region``), configuration hash, status
  (``pending``/``running``/``done``/``failed``), attempts, reason, output checksum and rows.

A unit ``done`` under the current configuration hash is skipped; ``clobber`` (or a changed
hash) makes it pending again. A unit left ``running`` by a killed run is simply run again:
its outputs are keyed by (visit, detector), so a rerun cannot duplicate them. One run per
release at a time: :meth:`Ledger.lock` takes a session advisory lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from base.db import Migration, Store, mapped_errors, migrate, q
from state.errors import CommandRejected, InvalidInputError

LEDGER_SCHEMA = "reprocess"
STATUSES = ("pending", "running", "done", "failed")


#: The reprocessing ledger; frozen DDL: append, never edit a released step.
STORE = Store(
    "reprocess",
    (
        Migration(
            1,
            "release and unit",
            """
CREATE TABLE IF NOT EXISTS {schema}.release (
    name text PRIMARY KEY, release_id integer NOT NULL, out_schema text NOT NULL,
    config_hash text NOT NULL, params jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'running', started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz);
CREATE TABLE IF NOT EXISTS {schema}.unit (
    release text NOT NULL REFERENCES {schema}.release(name),
    unit text NOT NULL, kind text NOT NULL, config_hash text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts integer NOT NULL DEFAULT 0, reason text NOT NULL DEFAULT '',
    checksum text, n_rows integer, updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (release, unit));
""",
        ),
    ),
)


@dataclass(frozen=True)
class UnitRow:
    unit: str
    kind: str
    config_hash: str
    status: str
    attempts: int
    reason: str
    checksum: str | None
    n_rows: int | None


class Ledger:
    """Create with :meth:`connect` on a caller-owned pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str = LEDGER_SCHEMA) -> None:
        self._pool = pool
        self.schema = schema
        self._lock_conn: asyncpg.Connection | None = None

    @classmethod
    async def connect(cls, pool: asyncpg.Pool, schema: str = LEDGER_SCHEMA) -> Ledger:
        async with mapped_errors("reprocess ledger connect"), pool.acquire() as conn:
            await migrate(conn, schema, STORE)
        return cls(pool, schema)

    def _t(self, name: str) -> str:
        return f"{q(self.schema)}.{q(name)}"

    async def lock(self, release: str) -> None:
        """Hold the release for this run; a second concurrent run is refused.

        The connection goes back to the pool whenever the lock is not held, and its release
        is inside the error mapping: a server that dies mid-call fails it too.
        """
        async with mapped_errors("reprocess lock"):
            conn = await self._pool.acquire()
            got = False
            try:
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtext($1))", f"dr:{release}"
                )
            finally:
                if not got:
                    await self._pool.release(conn)
        if not got:
            raise CommandRejected(f"release {release!r} is being processed by another run")
        self._lock_conn = conn

    async def unlock(self, release: str) -> None:
        """Give the lock up; the session's connection goes back to the pool whatever happens."""
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            async with mapped_errors("reprocess unlock"):
                try:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"dr:{release}")
                finally:
                    await self._pool.release(conn)

    async def begin_release(
        self, name: str, release_id: int, out_schema: str, config_hash: str, params: dict[str, Any]
    ) -> None:
        """Create or resume a release; its id and schema can never change once given."""
        async with mapped_errors("reprocess begin"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT name, release_id, out_schema FROM {self._t('release')}"
                " WHERE name = $1 OR (release_id = $2 AND $2 > 0)",
                name,
                release_id,
            )
            if row is not None and (row["name"], row["release_id"], row["out_schema"]) != (
                name,
                release_id,
                out_schema,
            ):
                raise InvalidInputError(
                    f"release {name!r} (id {release_id}, schema {out_schema}) clashes with "
                    f"release {row['name']!r} (id {row['release_id']}, schema {row['out_schema']})"
                )
            await conn.execute(
                f"INSERT INTO {self._t('release')} (name, release_id, out_schema, config_hash,"
                " params) VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (name) DO UPDATE SET"
                " config_hash = EXCLUDED.config_hash, params = EXCLUDED.params,"
                " status = 'running', started_at = now(), finished_at = NULL",
                name,
                release_id,
                out_schema,
                config_hash,
                json.dumps(params, sort_keys=True),
            )

    async def end_release(self, name: str, status: str) -> None:
        async with mapped_errors("reprocess end"), self._pool.acquire() as conn:
            await conn.execute(
                f"UPDATE {self._t('release')} SET status = $2, finished_at = now() WHERE name = $1",
                name,
                status,
            )

    async def reset(self, release: str) -> None:
        """Make every unit of the release pending again (``--clobber``)."""
        async with mapped_errors("reprocess reset"), self._pool.acquire() as conn:
            await conn.execute(
                f"UPDATE {self._t('unit')} SET status = 'pending', attempts = 0, reason = '',"
                " checksum = NULL, n_rows = NULL, updated_at = now() WHERE release = $1",
                release,
            )

    async def todo(
        self, release: str, units: Sequence[tuple[str, str]], config_hash: str, clobber: bool
    ) -> list[str]:
        """Register ``(unit, kind)`` pairs; return those not done under ``config_hash``."""
        async with mapped_errors("reprocess todo"), self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {self._t('unit')} (release, unit, kind, config_hash, status)"
                    " SELECT $1, u, k, $4, 'pending' FROM unnest($2::text[], $3::text[]) AS x(u, k)"
                    " ON CONFLICT (release, unit) DO NOTHING",
                    release,
                    [u for u, _ in units],
                    [k for _, k in units],
                    config_hash,
                )
                await conn.execute(
                    f"UPDATE {self._t('unit')} SET status = 'pending', attempts = 0, reason = '',"
                    " config_hash = $3, updated_at = now() WHERE release = $1"
                    " AND unit = ANY($2::text[]) AND ($4 OR status <> 'done' OR config_hash <> $3)",
                    release,
                    [u for u, _ in units],
                    config_hash,
                    clobber,
                )
            rows = await conn.fetch(
                f"SELECT unit FROM {self._t('unit')} WHERE release = $1"
                " AND unit = ANY($2::text[]) AND status <> 'done'",
                release,
                [u for u, _ in units],
            )
        return sorted(r["unit"] for r in rows)

    async def start(self, release: str, unit: str) -> int:
        """Mark a unit running; returns its attempt number."""
        async with mapped_errors("reprocess start"), self._pool.acquire() as conn:
            return int(
                await conn.fetchval(
                    f"UPDATE {self._t('unit')} SET status = 'running', attempts = attempts + 1,"
                    " updated_at = now() WHERE release = $1 AND unit = $2 RETURNING attempts",
                    release,
                    unit,
                )
            )

    async def done(self, release: str, unit: str, checksum: str, n_rows: int) -> None:
        async with mapped_errors("reprocess done"), self._pool.acquire() as conn:
            await conn.execute(
                f"UPDATE {self._t('unit')} SET status = 'done', reason = '', checksum = $3,"
                " n_rows = $4, updated_at = now() WHERE release = $1 AND unit = $2",
                release,
                unit,
                checksum,
                n_rows,
            )

    async def failed(self, release: str, unit: str, reason: str, *, final: bool) -> None:
        async with mapped_errors("reprocess failed"), self._pool.acquire() as conn:
            await conn.execute(
                f"UPDATE {self._t('unit')} SET status = $3, reason = $4, updated_at = now()"
                " WHERE release = $1 AND unit = $2",
                release,
                unit,
                "failed" if final else "pending",
                reason[:2000],
            )

    async def units(self, release: str) -> list[UnitRow]:
        async with mapped_errors("reprocess units"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT unit, kind, config_hash, status, attempts, reason, checksum, n_rows"
                f" FROM {self._t('unit')} WHERE release = $1 ORDER BY kind, unit",
                release,
            )
        return [UnitRow(**dict(r)) for r in rows]

    async def releases(self) -> list[dict[str, Any]]:
        async with mapped_errors("reprocess releases"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT r.name, r.release_id, r.out_schema, r.config_hash, r.status,"
                " r.started_at, r.finished_at,"
                " count(u.unit) AS units, count(u.unit) FILTER (WHERE u.status = 'done') AS done,"
                " count(u.unit) FILTER (WHERE u.status = 'failed') AS failed"
                f" FROM {self._t('release')} r LEFT JOIN {self._t('unit')} u ON u.release = r.name"
                " GROUP BY r.name ORDER BY r.started_at"
            )
        return [dict(r) for r in rows]
