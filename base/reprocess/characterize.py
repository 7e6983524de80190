"""Phase 3 of a release: variability features of every DiaObject from its full history.

After association, the release's complete DiaSource and DiaForcedSource history (no time
window, withdrawn sources left out) is read per batch of objects, in id order, and
``algorithms.variability.characterize`` turns it into one ``DiaObjectVariability`` row per
DiaObject (``DiaObjectLast`` lists them). Each batch is upserted in its own transaction, and
rows of objects that no longer exist in the batch's id range are deleted, so a rerun leaves
exactly the rows a first run would. Memory is bounded by the batch size.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
from collections.abc import Callable
from importlib import resources

import asyncpg
import numpy as np

from algorithms.association import Columns
from algorithms.variability import INT_COLUMNS, characterize, feature_names
from base.apdb import schema as sch
from base.apdb.copyread import fetch_columns
from base.apdb.copywrite import copy_payload
from base.apdb.schema import Column, Table, ddl_text, q
from base.db import Migration, Store, mapped_errors, migrate
from base.reprocess.associate import digest_rows
from state.errors import InvalidInputError

TABLE = "DiaObjectVariability"
#: Objects per batch: bounds memory (their whole history is held at once).
BATCH = 50_000
_HISTORY = ("diaObjectId", "midpointMjdTai", "band", "psfFlux", "psfFluxErr")
_FORCED = ("diaObjectId", "band", "psfFlux", "psfFluxErr")
_ID_MIN = -(2**63)


@functools.cache
def variability_table() -> Table:
    """The table's definition: the one place its DDL comes from."""
    cols = [Column("diaObjectId", "long", False)]
    for name in feature_names():
        cols.append(
            Column(name, "int", False) if name in INT_COLUMNS else Column(name, "double", True)
        )
    return Table(TABLE, tuple(cols), ("diaObjectId",), ())


def _subset(table: str, names: tuple[str, ...]) -> Table:
    full = sch.tables()[table]
    return Table(table, tuple(full.column(n) for n in names), (), ())


def generated_ddl() -> str:
    """The table's DDL from :func:`variability_table`: what ``sql/0001_variability.sql``
    froze (``tests/test_db.py`` compares them)."""
    return ddl_text([variability_table()], "DiaObjectVariability generated from its features")


#: Frozen DDL: append, never edit a released step.
STORE = Store(
    "reprocess-variability",
    (
        Migration(
            1,
            "DiaObjectVariability",
            resources.files("base.reprocess").joinpath("sql/0001_variability.sql").read_text(),
        ),
    ),
)


async def characterize_release(
    pool: asyncpg.Pool,
    schema: str,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, int]:
    """Write ``schema.DiaObjectVariability``; return its checksum and row count.

    ``progress(done, total)`` is called with objects done after each batch.
    """
    if batch < 1:
        raise InvalidInputError(f"batch {batch}: must be >= 1")
    t = f"{q(schema)}.{q(TABLE)}"
    async with mapped_errors(f"characterize {schema}"), pool.acquire() as conn:
        if (
            await conn.fetchval("SELECT to_regclass($1)", f"{q(schema)}.{q('DiaObjectLast')}")
            is None
        ):
            raise InvalidInputError(f"schema {schema} has no APDB to characterize")
        await migrate(conn, schema, STORE)
        total = int(await conn.fetchval(f"SELECT count(*) FROM {q(schema)}.{q('DiaObjectLast')}"))
    done, after = 0, _ID_MIN
    if progress is not None:
        progress(0, total)
    while True:
        async with mapped_errors(f"characterize {schema} read"), pool.acquire() as conn:
            rows = await conn.fetch(
                f'SELECT "diaObjectId" FROM {q(schema)}.{q("DiaObjectLast")}'
                ' WHERE "diaObjectId" > $1 ORDER BY "diaObjectId" LIMIT $2',
                after,
                batch,
            )
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            if len(ids) == 0:
                await conn.execute(f'DELETE FROM {t} WHERE "diaObjectId" > $1', after)
                break
            sources, forced = await _history(conn, schema, int(ids[0]), int(ids[-1]))
        cols = await asyncio.to_thread(characterize, ids, sources, forced)
        await _upsert(pool, schema, cols, after, int(ids[-1]))
        done += len(ids)
        after = int(ids[-1])
        if progress is not None:
            progress(done, max(total, done))
    return await variability_checksum(pool, schema, batch)


async def _history(
    conn: asyncpg.Connection, schema: str, lo: int, hi: int
) -> tuple[Columns, Columns]:
    """DiaSources (not withdrawn) and DiaForcedSources of objects with ids in [lo, hi]."""
    where = f'WHERE "diaObjectId" BETWEEN {lo:d} AND {hi:d}'
    live = "coalesce(\"timeWithdrawnMjdTai\", 'NaN') = 'NaN'"
    sources = await fetch_columns(
        conn,
        _subset("DiaSource", _HISTORY),
        f"SELECT * FROM {q(schema)}.{q('DiaSource')} {where} AND {live}",
    )
    forced = await fetch_columns(
        conn,
        _subset("DiaForcedSource", _FORCED),
        f"SELECT * FROM {q(schema)}.{q('DiaForcedSource')} {where} AND {live}",
    )
    return sources, forced


async def _upsert(pool: asyncpg.Pool, schema: str, cols: Columns, after: int, upto: int) -> None:
    """Upsert one batch and delete the rows of ids in (after, upto] that are not in it
    (objects gone since a previous run)."""
    table = variability_table()
    t = f"{q(schema)}.{q(TABLE)}"
    n = len(cols["diaObjectId"])
    names, payload = copy_payload(table, cols, n)
    updates = ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in names if c != "diaObjectId")
    async with (
        mapped_errors(f"characterize {schema} write"),
        pool.acquire() as conn,
        conn.transaction(),
    ):
        await conn.execute(f"CREATE TEMP TABLE variability_batch (LIKE {t}) ON COMMIT DROP")
        await conn.copy_to_table(
            "variability_batch", source=io.BytesIO(payload), columns=names, format="binary"
        )
        await conn.execute(
            f"INSERT INTO {t} SELECT * FROM variability_batch"
            f' ON CONFLICT ("diaObjectId") DO UPDATE SET {updates}'
        )
        await conn.execute(
            f'DELETE FROM {t} v WHERE "diaObjectId" > $1 AND "diaObjectId" <= $2 AND NOT EXISTS'
            ' (SELECT 1 FROM variability_batch b WHERE b."diaObjectId" = v."diaObjectId")',
            after,
            upto,
        )


async def variability_checksum(
    pool: asyncpg.Pool, schema: str, batch: int = BATCH
) -> tuple[str, int]:
    """sha256 of the table's rows by id (floats rounded to 9 decimals) and their count."""
    cols = ", ".join(q(c) for c in variability_table().names)
    h = hashlib.sha256()
    n, after = 0, _ID_MIN
    async with mapped_errors(f"characterize {schema} checksum"), pool.acquire() as conn:
        while True:
            rows = await conn.fetch(
                f'SELECT {cols} FROM {q(schema)}.{q(TABLE)} WHERE "diaObjectId" > $1'
                ' ORDER BY "diaObjectId" LIMIT $2',
                after,
                batch,
            )
            digest_rows(h, rows)
            n += len(rows)
            if len(rows) < batch:
                break
            after = rows[-1][0]
    return h.hexdigest(), n
