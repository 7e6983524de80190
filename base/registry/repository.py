"""The data repository registry on PostgreSQL (asyncpg): register datasets and find them.

Every insert is keyed by its natural key (``(visit, detector)`` for a raw) and does nothing
when the row exists, so a repeated registration adds nothing. Connection failures (a
restarting server) raise ``DatabaseUnavailableError`` (a ``ConnectionLostError``), which callers
retry; anything else the database refuses raises ``StorageError`` (``base.db.mapped_errors``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from base.db import connect_pool, mapped_errors, migrate
from base.registry.records import (
    CalibRecord,
    DetectorRecord,
    ExposureRecord,
    RawRecord,
    RefcatRecord,
    TemplateRecord,
)
from base.registry.schema import STORE, adopt_legacy
from state.errors import InvalidInputError

R = TypeVar("R")


def _database(what: str) -> contextlib.AbstractAsyncContextManager[None]:
    return mapped_errors(f"registry: {what}")


def _insert_sql(table: str, record: object) -> tuple[str, list[Any]]:
    """An insert that does nothing when any unique key already holds the row.

    No conflict target: concurrent registrations of two detectors of one new exposure both
    insert its row, and the loser may trip over ``image_name`` before ``visit``.
    """
    values = asdict(record)  # type: ignore[call-overload]
    cols = list(values)
    marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) ON CONFLICT DO NOTHING"
    return sql, list(values.values())


def _record(cls: type[R], row: asyncpg.Record) -> R:
    return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]


class Repository:
    """Create with :meth:`connect`; :meth:`close` when done."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema

    @classmethod
    async def connect(cls, dsn: str, schema: str = "registry") -> Repository:
        """Open a pool on ``dsn`` and bring ``schema`` up to the latest migration."""
        pool = await connect_pool(
            dsn, min_size=0, max_size=4, search_path=schema, what="registry", stateless=True
        )
        try:
            async with _database("migrating"), pool.acquire() as conn:
                await adopt_legacy(conn, schema)
                await migrate(conn, schema, STORE)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, schema)

    async def close(self) -> None:
        await self._pool.close()

    # ---------------------------------------------------------------- register
    async def register_raw(
        self, raw: RawRecord, exposure: ExposureRecord, detector: DetectorRecord
    ) -> bool:
        """Register a raw with its exposure and detector; False when it was already there."""
        async with (
            _database(f"registering raw {raw.visit}/{raw.detector}"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute(*_split(_insert_sql("exposures", exposure)))
            await conn.execute(*_split(_insert_sql("detectors", detector)))
            status = await conn.execute(*_split(_insert_sql("raws", raw)))
        return status.endswith(" 1")

    async def register_detector(self, detector: DetectorRecord) -> bool:
        return await self._insert("detectors", detector)

    async def register_calib(self, calib: CalibRecord) -> bool:
        return await self._insert("calibrations", calib)

    async def register_template(self, template: TemplateRecord) -> bool:
        return await self._insert("templates", template)

    async def register_refcat(self, refcat: RefcatRecord) -> bool:
        """Register a reference catalogue; the first one of a (camera, name) stays."""
        return await self._insert("refcats", refcat)

    async def put_product(self, product: CalibRecord | TemplateRecord | RefcatRecord) -> str:
        """Register a calibration, template or refcat, or point its record at ``product``'s
        file: ``"added"``, ``"replaced"`` (the key held another path or checksum) or
        ``"same"``. A re-registration of what is there changes nothing."""
        table, key = _PRODUCT_KEYS[type(product)]
        values = asdict(product)
        cols = list(values)
        marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
        changed = [c for c in cols if c not in key]
        sql = (
            f"INSERT INTO {table} AS t ({', '.join(cols)}) VALUES ({marks})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in changed)
            + " WHERE (t.path, t.checksum, t.refused)"
            " IS DISTINCT FROM (EXCLUDED.path, EXCLUDED.checksum, EXCLUDED.refused)"
            " RETURNING (xmax = 0) AS inserted"
        )
        async with _database(f"registering into {table}"):
            row = await self._pool.fetchrow(sql, *values.values())
        if row is None:
            return "same"
        return "added" if row["inserted"] else "replaced"

    async def _insert(self, table: str, record: object) -> bool:
        async with _database(f"registering into {table}"):
            status = await self._pool.execute(*_split(_insert_sql(table, record)))
        return status.endswith(" 1")

    # ------------------------------------------------------------------- query
    async def _fetch(self, what: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with _database(what):
            return list(await self._pool.fetch(sql, *args))

    async def get_raw(self, visit: int, detector: int) -> RawRecord | None:
        rows = await self._fetch(
            "reading a raw",
            "SELECT * FROM raws WHERE visit = $1 AND detector = $2",
            visit,
            detector,
        )
        return _record(RawRecord, rows[0]) if rows else None

    async def raws(self) -> list[RawRecord]:
        """Every registered raw, in ingest order."""
        rows = await self._fetch("listing raws", "SELECT * FROM raws ORDER BY ingested_at, visit")
        return [_record(RawRecord, r) for r in rows]

    async def raws_from_visit(self, first_visit: int) -> list[RawRecord]:
        """The raws of ``first_visit`` and every later visit, in visit and detector order."""
        rows = await self._fetch(
            "listing raws",
            "SELECT * FROM raws WHERE visit >= $1 ORDER BY visit, detector",
            first_visit,
        )
        return [_record(RawRecord, r) for r in rows]

    async def raws_ingested_since(
        self, first_visit: int, since: datetime | None, settled: timedelta = timedelta(0)
    ) -> tuple[list[RawRecord], datetime | None]:
        """Raws of ``first_visit`` and later ingested at or after ``since`` (None: all) and at
        least ``settled`` ago by the database's clock, and the latest ingestion time among
        them (the next call's ``since``, less a margin)."""
        rows = await self._fetch(
            "listing recent raws",
            "SELECT * FROM raws WHERE visit >= $1"
            " AND ($2::timestamptz IS NULL OR ingested_at >= $2)"
            " AND ingested_at <= now() - $3::interval ORDER BY visit, detector",
            first_visit,
            since,
            settled,
        )
        latest = max((r["ingested_at"] for r in rows), default=None)
        return [_record(RawRecord, r) for r in rows], latest

    async def get_exposure(self, visit: int) -> ExposureRecord | None:
        rows = await self._fetch(
            "reading an exposure", "SELECT * FROM exposures WHERE visit = $1", visit
        )
        return _record(ExposureRecord, rows[0]) if rows else None

    async def get_calibs(
        self, detector: int, band: str, time: float, *, camera: str | None = None
    ) -> dict[str, CalibRecord]:
        """The calibrations valid at ``time`` (MJD): bias, dark, bpm and the band's flat.

        Where validity ranges overlap the one that started last wins.
        """
        rows = await self._fetch(
            "reading calibrations",
            "SELECT DISTINCT ON (calib_type) * FROM calibrations"
            " WHERE detector = $1 AND (band = '' OR band = $2)"
            " AND valid_start <= $3 AND $3 < valid_end AND ($4::text IS NULL OR camera = $4)"
            " ORDER BY calib_type, valid_start DESC",
            detector,
            band,
            time,
            camera,
        )
        cameras = {r["camera"] for r in rows}
        if len(cameras) > 1:
            raise InvalidInputError(
                f"calibrations of several cameras ({', '.join(sorted(cameras))}); name one"
            )
        return {r["calib_type"]: _record(CalibRecord, r) for r in rows}

    async def get_template(
        self,
        band: str,
        *,
        field_id: int | None = None,
        ra: float | None = None,
        dec: float | None = None,
        detector: int | None = None,
        camera: str | None = None,
        radius_deg: float = 1.0,
    ) -> list[TemplateRecord]:
        """Templates of a field (``field_id``) or of the field nearest ``ra, dec``.

        A region lookup takes the field whose centre is nearest and within ``radius_deg``;
        ``detector`` narrows the answer to one detector. Empty when nothing matches.
        """
        if field_id is None:
            if ra is None or dec is None:
                raise InvalidInputError("get_template needs field_id, or ra and dec")
            field_id = await self._nearest_field(band, ra, dec, camera, radius_deg)
            if field_id is None:
                return []
        rows = await self._fetch(
            "reading templates",
            "SELECT * FROM templates WHERE band = $1 AND field_id = $2"
            " AND ($3::int IS NULL OR detector = $3) AND ($4::text IS NULL OR camera = $4)"
            " ORDER BY camera, detector",
            band,
            field_id,
            detector,
            camera,
        )
        return [_record(TemplateRecord, r) for r in rows]

    async def _nearest_field(
        self, band: str, ra: float, dec: float, camera: str | None, radius_deg: float
    ) -> int | None:
        rows = await self._fetch(
            "searching templates",
            "SELECT DISTINCT field_id, ra, dec FROM templates"
            " WHERE band = $1 AND ($2::text IS NULL OR camera = $2)",
            band,
            camera,
        )
        best: tuple[float, int] | None = None
        for r in rows:
            sep = _separation_deg(ra, dec, r["ra"], r["dec"])
            if sep <= radius_deg and (best is None or sep < best[0]):
                best = (sep, int(r["field_id"]))
        return None if best is None else best[1]

    async def get_refcat(self, camera: str, *, name: str | None = None) -> RefcatRecord | None:
        """The camera's reference catalogue ``name``, or its latest registered when None."""
        rows = await self._fetch(
            "reading a reference catalogue",
            "SELECT * FROM refcats WHERE camera = $1 AND ($2::text IS NULL OR name = $2)"
            " ORDER BY registered_at DESC, name LIMIT 1",
            camera,
            name,
        )
        return _record(RefcatRecord, rows[0]) if rows else None

    async def counts(self) -> dict[str, int]:
        out = {}
        for table in ("exposures", "detectors", "raws", "calibrations", "templates", "refcats"):
            async with _database(f"counting {table}"):
                out[table] = int(await self._pool.fetchval(f"SELECT COUNT(*) FROM {table}"))
        return out


#: Table and natural key of each product record (``put_product``).
_PRODUCT_KEYS: dict[type, tuple[str, tuple[str, ...]]] = {
    CalibRecord: ("calibrations", ("camera", "detector", "calib_type", "band", "valid_start")),
    TemplateRecord: ("templates", ("camera", "field_id", "band", "detector")),
    RefcatRecord: ("refcats", ("camera", "name")),
}


def _split(sql_args: tuple[str, list[Any]]) -> tuple[Any, ...]:
    sql, args = sql_args
    return (sql, *args)


def _separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    hav = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(hav))))
