"""The registry's tables: frozen migrations, applied once each, in order, by ``base.db``.

A migration is never edited after release: a schema change is a new entry at the end.
Registries created before ``base.db`` recorded their versions in ``registry_migrations``;
:func:`adopt_legacy` carries those over once, so such a database is upgraded, not re-created.
"""

from __future__ import annotations

import asyncpg

from base.db import Migration, Store, q

_MIGRATIONS = (
    Migration(
        1,
        "exposures, detectors, raws, calibrations, templates",
        """
        CREATE TABLE {schema}.exposures (
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
        CREATE TABLE {schema}.detectors (
            camera TEXT NOT NULL,
            detector INTEGER NOT NULL,
            name TEXT NOT NULL,
            vendor TEXT,
            nx INTEGER,
            ny INTEGER,
            PRIMARY KEY (camera, detector)
        );
        CREATE TABLE {schema}.raws (
            visit BIGINT NOT NULL REFERENCES {schema}.exposures (visit),
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
        CREATE TABLE {schema}.calibrations (
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
        CREATE TABLE {schema}.templates (
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
        CREATE INDEX templates_band ON {schema}.templates (band, camera);
        """,
    ),
    Migration(
        2,
        "refcats",
        """
        CREATE TABLE {schema}.refcats (
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
    Migration(
        3,
        "products refused at registration",
        """
        ALTER TABLE {schema}.calibrations ADD COLUMN refused TEXT;
        ALTER TABLE {schema}.templates ADD COLUMN refused TEXT;
        ALTER TABLE {schema}.refcats ADD COLUMN refused TEXT;
        """,
    ),
)

#: The registry store (its own schema, ``registry`` by default).
STORE = Store("registry", _MIGRATIONS, code_version="1.1")


async def adopt_legacy(conn: asyncpg.Connection, schema: str) -> None:
    """Record the versions of a pre-``base.db`` registry (``registry_migrations``) once."""
    async with conn.transaction():
        # The lock of base.db.migrate: a concurrent starter waits, then finds the table.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"dmcs:{schema}")
        legacy = await conn.fetchval("SELECT to_regclass($1)", f"{q(schema)}.registry_migrations")
        known = await conn.fetchval("SELECT to_regclass($1)", f"{q(schema)}.schema_version")
        if legacy is None or known is not None:
            return
        await conn.execute(
            f"CREATE TABLE {q(schema)}.schema_version (component text NOT NULL,"
            " version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (component, version))"
        )
        await conn.execute(
            f"INSERT INTO {q(schema)}.schema_version (component, version, applied_at)"
            f" SELECT 'registry', version, applied_at FROM {q(schema)}.registry_migrations"
        )
