"""base.db on a real PostgreSQL: frozen DDL, idempotent migrations, refusal of a database whose
recorded schema version, code version or frozen parameter differs from this code's."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import AsyncIterator
from importlib import resources

import asyncpg
import pytest
import pytest_asyncio

from base.apdb import Apdb, store_spec
from base.apdb import schema as sch
from base.apdb.apdb import FROZEN_YAML_VERSION
from base.db import IncompatibleDatabaseError, Migration, Store, connect_pool, migrate, recorded
from base.prompt_records import STORE as PROMPT_STORE
from base.prompt_records import PromptRecords
from base.registry import Repository
from base.registry.schema import STORE as REGISTRY_STORE
from base.reprocess import characterize

TOY = Store(
    "toy",
    (
        Migration(1, "t", "CREATE TABLE {schema}.t (a integer PRIMARY KEY);"),
        Migration(2, "t.b", "ALTER TABLE {schema}.t ADD COLUMN b text;"),
    ),
    code_version="1.2",
    params={"healpix_order": "16"},
)


@pytest_asyncio.fixture(loop_scope="session")
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_dsn)
    yield c
    await c.close()


async def _fresh(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _catalog(conn: asyncpg.Connection, schema: str) -> list[tuple[str, ...]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
        schema,
    )
    return [tuple(r) for r in rows]


def test_the_frozen_apdb_ddl_is_what_felis_reads_from_apdb_yaml() -> None:
    frozen = resources.files("base.apdb").joinpath("sql/0001_apdb_tables.sql").read_text()
    assert sch.schema_version() == FROZEN_YAML_VERSION
    assert frozen == sch.generated_ddl()
    assert store_spec().migrations[0].sql.startswith(frozen)


def test_the_frozen_variability_ddl_is_what_its_features_give() -> None:
    frozen = resources.files("base.reprocess").joinpath("sql/0001_variability.sql").read_text()
    assert frozen == characterize.generated_ddl()


def test_migrations_are_numbered_in_order() -> None:
    with pytest.raises(ValueError, match=r"numbered 1\.\.n"):
        Store("bad", (Migration(2, "x", ""),))


async def test_migrating_twice_changes_nothing(conn: asyncpg.Connection) -> None:
    await _fresh(conn, "db_twice")
    assert await migrate(conn, "db_twice", TOY) == [1, 2]
    before = await _catalog(conn, "db_twice")
    meta = await recorded(conn, "db_twice", "toy")
    assert await migrate(conn, "db_twice", TOY) == []
    assert await _catalog(conn, "db_twice") == before
    assert await recorded(conn, "db_twice", "toy") == meta
    assert meta["schema_version"] == "2"
    assert meta["code_version"] == "1.2"
    assert meta["healpix_order"] == "16"


async def test_an_older_schema_is_upgraded_or_refused_when_upgrades_are_off(
    conn: asyncpg.Connection,
) -> None:
    await _fresh(conn, "db_older")
    v1 = dataclasses.replace(TOY, migrations=TOY.migrations[:1])
    assert await migrate(conn, "db_older", v1) == [1]
    with pytest.raises(IncompatibleDatabaseError, match="migrations enabled") as info:
        await migrate(conn, "db_older", TOY, upgrade=False)
    assert (info.value.recorded, info.value.expected) == (1, 2)
    assert await migrate(conn, "db_older", TOY) == [2]


async def test_a_newer_schema_is_refused(conn: asyncpg.Connection) -> None:
    await _fresh(conn, "db_newer")
    await migrate(conn, "db_newer", TOY)
    v1 = dataclasses.replace(TOY, migrations=TOY.migrations[:1])
    with pytest.raises(IncompatibleDatabaseError) as info:
        await migrate(conn, "db_newer", v1)
    e = info.value
    assert (e.store, e.key, e.recorded, e.expected) == ("toy", "schema_version", 2, 1)
    assert "toy store in schema 'db_newer'" in str(e) and "newer code" in str(e)
    copy = pickle.loads(pickle.dumps(e))  # as a Ray actor's caller receives it
    assert (type(copy), str(copy), copy.recorded) == (type(e), str(e), 2)
    assert await conn.fetchval('SELECT count(*) FROM "db_newer".t') == 0, "nothing dropped"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"params": {"healpix_order": "12"}}, "healpix_order"),
        ({"code_version": "2.0"}, "code_version"),
    ],
)
async def test_a_changed_frozen_parameter_or_code_major_is_refused(
    conn: asyncpg.Connection, change: dict[str, object], key: str
) -> None:
    await _fresh(conn, "db_param")
    await migrate(conn, "db_param", TOY)
    with pytest.raises(IncompatibleDatabaseError, match=f"recorded {key}") as info:
        await migrate(conn, "db_param", dataclasses.replace(TOY, **change))  # type: ignore[arg-type]
    assert info.value.key == key
    minor = dataclasses.replace(TOY, code_version="1.3")
    assert await migrate(conn, "db_param", minor) == [], "a new minor version is compatible"


async def test_a_store_of_earlier_dmcs_without_metadata_is_adopted(
    conn: asyncpg.Connection,
) -> None:
    """Stores migrated before base.db have version rows and no metadata: recorded now."""
    await _fresh(conn, "db_adopt")
    await migrate(conn, "db_adopt", TOY)
    await conn.execute('DROP TABLE "db_adopt".dmcs_metadata')
    assert await migrate(conn, "db_adopt", TOY) == []
    assert (await recorded(conn, "db_adopt", "toy"))["schema_version"] == "2"


async def test_the_apdb_refuses_a_database_of_another_schema_version_or_healpix_order(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    await _fresh(conn, "db_apdb")
    apdb = await Apdb.connect(pg_dsn, "db_apdb")
    await apdb.close()
    meta = await recorded(conn, "db_apdb", "apdb")
    assert meta["apdb_yaml_version"] == FROZEN_YAML_VERSION
    assert meta["healpix_order"] == "16"
    assert (await recorded(conn, "db_apdb", "alert_outbox"))["schema_version"] == "1"
    for key, value in (("schema_version", "7"), ("healpix_order", "10")):
        await conn.execute(
            "UPDATE db_apdb.dmcs_metadata SET value = $1 WHERE component = 'apdb' AND key = $2",
            value,
            key,
        )
        with pytest.raises(IncompatibleDatabaseError, match=rf"apdb store.*recorded {key}"):
            await Apdb.connect(pg_dsn, "db_apdb")
        await conn.execute(
            "UPDATE db_apdb.dmcs_metadata SET value = $1 WHERE component = 'apdb' AND key = $2",
            meta[key],
            key,
        )
    apdb = await Apdb.connect(pg_dsn, "db_apdb")
    await apdb.close()


async def test_the_registry_and_prompt_records_refuse_a_newer_schema(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    await _fresh(conn, "db_reg")
    repo = await Repository.connect(pg_dsn, "db_reg")
    await repo.close()
    await conn.execute("UPDATE db_reg.dmcs_metadata SET value = '99' WHERE key = 'schema_version'")
    expected = (
        rf"registry store.*schema_version is 99 but this code expects {REGISTRY_STORE.latest}"
    )
    with pytest.raises(IncompatibleDatabaseError, match=expected):
        await Repository.connect(pg_dsn, "db_reg")

    await _fresh(conn, "db_prompt")
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        await PromptRecords.connect(pool, "db_prompt")
        await conn.execute(
            "UPDATE db_prompt.dmcs_metadata SET value = $1 WHERE key = 'schema_version'",
            str(PROMPT_STORE.latest + 1),
        )
        with pytest.raises(IncompatibleDatabaseError, match="prompt store") as info:
            await PromptRecords.connect(pool, "db_prompt")
        assert (info.value.recorded, info.value.expected) == (
            PROMPT_STORE.latest + 1,
            PROMPT_STORE.latest,
        )
    finally:
        await pool.close()


@pytest.mark.parametrize("stateless", [False, True])
async def test_a_stateless_pool_skips_the_session_reset_but_not_the_rollback(
    pg_dsn: str, stateless: bool
) -> None:
    """A stateless pool saves the round trip of asyncpg's session reset on every release; a
    transaction left open is rolled back either way."""
    pool = await connect_pool(pg_dsn, min_size=1, max_size=1, stateless=stateless)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'kept'")
            await conn.transaction().start()
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            name = await conn.fetchval("SHOW application_name")
            assert (name == "kept") is stateless
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
            assert not conn.is_in_transaction()
    finally:
        await pool.close()
