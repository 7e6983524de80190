"""Versioned schema migrations of the registry, applied once each, in order.

Applied versions are recorded in ``registry_migrations``; an advisory lock serializes
components that migrate the same database at the same moment. A migration is never edited
after release: a schema change is a new entry at the end of :data:`MIGRATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

#: pg_advisory_xact_lock key of registry migrations ("dmcsreg" in ASCII).
_LOCK_KEY = 0x646D6373726567


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "exposures, detectors, raws, calibrations, templates",
        """
        CREATE TABLE exposures (
            visit BIGINT PRIMARY KEY,
            image_name TEXT NOT NULL UNIQUE,
            camera TEXT NOT NULL,
            day_obs INTEGER,
            seq_num INTEGER,
            band TEXT,
            exposure_time DOUBLE PRECISION,
            mjd_start DOUBLE PRECISION,
            ra DOUBLE PRECISION,
            dec DOUBLE PRECISION,
            field_id INTEGER
        );
        CREATE TABLE detectors (
            camera TEXT NOT NULL,
            detector INTEGER NOT NULL,
            name TEXT NOT NULL,
            vendor TEXT,
            nx INTEGER,
            ny INTEGER,
            PRIMARY KEY (camera, detector)
        );
        CREATE TABLE raws (
            visit BIGINT NOT NULL REFERENCES exposures (visit),
            detector INTEGER NOT NULL,
            camera TEXT NOT NULL,
            image_name TEXT NOT NULL,
            path TEXT NOT NULL,
            checksum TEXT NOT NULL,
            file_checksum TEXT NOT NULL,
            byte_size BIGINT NOT NULL,
            nx INTEGER NOT NULL,
            ny INTEGER NOT NULL,
            n_amps INTEGER NOT NULL,
            header_merged BOOLEAN NOT NULL,
            ingested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (visit, detector)
        );
        CREATE TABLE calibrations (
            camera TEXT NOT NULL,
            detector INTEGER NOT NULL,
            calib_type TEXT NOT NULL,
            band TEXT NOT NULL DEFAULT '',
            valid_start DOUBLE PRECISION NOT NULL DEFAULT '-infinity',
            valid_end DOUBLE PRECISION NOT NULL DEFAULT 'infinity',
            path TEXT NOT NULL,
            checksum TEXT NOT NULL,
            byte_size BIGINT NOT NULL,
            nx INTEGER,
            ny INTEGER,
            PRIMARY KEY (camera, detector, calib_type, band, valid_start)
        );
        CREATE TABLE templates (
            camera TEXT NOT NULL,
            field_id INTEGER NOT NULL,
            band TEXT NOT NULL,
            detector INTEGER NOT NULL,
            ra DOUBLE PRECISION NOT NULL,
            dec DOUBLE PRECISION NOT NULL,
            path TEXT NOT NULL,
            checksum TEXT NOT NULL,
            byte_size BIGINT NOT NULL,
            nx INTEGER,
            ny INTEGER,
            PRIMARY KEY (camera, field_id, band, detector)
        );
        CREATE INDEX templates_band ON templates (band, camera);
        """,
    ),
    Migration(
        2,
        "refcats",
        """
        CREATE TABLE refcats (
            camera TEXT NOT NULL,
            name TEXT NOT NULL,
            path TEXT NOT NULL,
            checksum TEXT NOT NULL,
            byte_size BIGINT NOT NULL,
            n_objects BIGINT,
            registered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (camera, name)
        );
        """,
    ),
)


async def migrate(conn: asyncpg.Connection, schema: str) -> list[int]:
    """Bring ``schema`` up to the latest version; returns the versions applied now.

    ``conn`` must have ``schema`` first on its ``search_path`` (see ``Repository.connect``).
    """
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS registry_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM registry_migrations")}
        for m in MIGRATIONS:
            if m.version in done:
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO registry_migrations (version, name) VALUES ($1, $2)", m.version, m.name
            )
            applied_now.append(m.version)
    return applied_now


async def schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('registry_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM registry_migrations"))
