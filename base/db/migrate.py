"""The one migration runner of dmcs's PostgreSQL stores, and the check that refuses a database
this code is not compatible with (as lsst-dax-apdb does).

A store (:class:`Store`) is a component's tables in one schema. Its migrations are frozen DDL
text checked into the repository, applied once each, in order; a released migration is never
edited: a schema change is a new entry at the end. Each schema holds two bookkeeping tables:

* ``schema_version (component, version, applied_at)``: the migrations applied;
* ``dmcs_metadata (component, key, value)``: per store, ``schema_version`` (the latest
  migration applied), ``code_version`` (``major.minor`` of the code that reads and writes the
  store), ``dmcs_version`` (the package that last migrated it, for information) and the
  store's frozen parameters (HEALPix order, apdb.yaml version, ...).

At connect (:func:`migrate`) a store whose recorded schema version is newer than the code's,
whose code version has another major number, or whose frozen parameter differs, is refused
with an :class:`~state.errors.IncompatibleDatabaseError` naming the store, the key, the recorded
and the expected values. Pending migrations are applied unless ``upgrade=False``, in which case
an older schema is refused too. Everything runs in one transaction under an advisory lock on
the schema, so concurrent starters apply each migration exactly once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata

import asyncpg

from state.errors import IncompatibleDatabaseError

from .errors import mapped_errors

VERSIONS = "schema_version"
METADATA = "dmcs_metadata"


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    #: Frozen DDL; ``{schema}`` stands for the quoted schema name, nothing else is substituted.
    sql: str

    def render(self, schema: str) -> str:
        return self.sql.replace("{schema}", q(schema))


@dataclass(frozen=True)
class Store:
    """A component's tables: its migrations, its code version and its frozen parameters."""

    component: str
    migrations: tuple[Migration, ...]
    code_version: str = "1.0"
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        numbers = [m.version for m in self.migrations]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{self.component}: migrations must be numbered 1..n, got {numbers}")

    @property
    def latest(self) -> int:
        return len(self.migrations)


@functools.cache
def dmcs_version() -> str:
    try:
        return metadata.version("dmcs")
    except metadata.PackageNotFoundError:
        return "unknown"


async def recorded(conn: asyncpg.Connection, schema: str, component: str) -> dict[str, str]:
    """The metadata recorded for ``component`` in ``schema`` (empty if none)."""
    if await conn.fetchval("SELECT to_regclass($1)", f"{q(schema)}.{METADATA}") is None:
        return {}
    rows = await conn.fetch(
        f"SELECT key, value FROM {q(schema)}.{METADATA} WHERE component = $1", component
    )
    return {r["key"]: r["value"] for r in rows}


async def migrate(
    conn: asyncpg.Connection, schema: str, store: Store, *, upgrade: bool = True
) -> list[int]:
    """Check ``store`` in ``schema`` against this code and apply its pending migrations.

    Returns the versions applied now. Raises ``IncompatibleDatabaseError`` (see module doc).
    """
    s = q(schema)
    async with (
        mapped_errors(f"{store.component} migrations in schema {schema}"),
        conn.transaction(),
    ):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"dmcs:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.{VERSIONS} (component text NOT NULL,"
            " version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (component, version))"
        )
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.{METADATA} (component text NOT NULL,"
            " key text NOT NULL, value text NOT NULL, PRIMARY KEY (component, key))"
        )
        done = {
            int(r["version"])
            for r in await conn.fetch(
                f"SELECT version FROM {s}.{VERSIONS} WHERE component = $1", store.component
            )
        }
        meta = await recorded(conn, schema, store.component)
        _check(store, schema, done, meta, upgrade)
        applied: list[int] = []
        for m in store.migrations:
            if m.version in done:
                continue
            await conn.execute(m.render(schema))
            await conn.execute(
                f"INSERT INTO {s}.{VERSIONS} (component, version) VALUES ($1, $2)",
                store.component,
                m.version,
            )
            applied.append(m.version)
        values = {
            **store.params,
            "schema_version": str(store.latest),
            "code_version": store.code_version,
            "dmcs_version": dmcs_version(),
        }
        await conn.executemany(
            f"INSERT INTO {s}.{METADATA} (component, key, value) VALUES ($1, $2, $3)"
            " ON CONFLICT (component, key) DO UPDATE SET value = EXCLUDED.value",
            [(store.component, k, v) for k, v in values.items()],
        )
    return applied


def _check(store: Store, schema: str, done: set[int], meta: dict[str, str], upgrade: bool) -> None:
    where = f"schema {schema!r}"

    def refuse(key: str, was: object, want: object, hint: str) -> None:
        raise IncompatibleDatabaseError(store.component, where, key, was, want, hint)

    at = int(meta.get("schema_version", max(done, default=0)))
    if at > store.latest or any(v > store.latest for v in done):
        refuse(
            "schema_version",
            at,
            store.latest,
            "the database was migrated by newer code; use that code, or a fresh schema",
        )
    if at < store.latest and done and not upgrade:
        refuse("schema_version", at, store.latest, "connect with migrations enabled to upgrade")
    was = meta.get("code_version")
    if was is not None and was.split(".")[0] != store.code_version.split(".")[0]:
        refuse(
            "code_version",
            was,
            store.code_version,
            "the store's layout changed incompatibly; use a fresh schema",
        )
    for key, want in store.params.items():
        if key in meta and meta[key] != want:
            refuse(
                key,
                meta[key],
                want,
                "a frozen parameter cannot change for an existing"
                " store; use a fresh schema, or the configuration it was created with",
            )
