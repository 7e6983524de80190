"""Prompt-processing records in PostgreSQL (asyncpg): visits, stage times, CCD outcomes.

Tables (in schema ``prompt`` by default; created by the frozen migrations of
:data:`STORE` at connect, checked by ``base.db.migrate``):

* ``visit`` -- one row per visit; ``record_visit`` is an idempotent upsert.
* ``stage_time`` -- (visit, detector, stage) -> tai; the first write wins (``ON CONFLICT DO
  NOTHING``), so a retried CCD cannot move a stage already recorded. ``detector = -1`` holds a
  whole-visit stage. Written in bulk with one ``unnest`` statement per call.
* ``ccd_outcome`` -- (visit, detector) -> the latest attempt's outcome and data quality; an
  outcome of an older attempt than the one stored changes nothing.
* ``ccd_attempt`` -- append-only log of every attempt's status, so a failure that a retry
  recovered stays visible to the Performance Report.
* ``ccd_alerts`` -- (visit, detector) -> the number of alerts published (first write wins),
  written by the alert publisher with its ``alertsPublished`` stage (``record_alerts``).
* ``ccd_outcome``/``ccd_attempt`` statuses gained ``deferred`` (migration 4): a CCD the
  overload policy left to the daytime catch-up.
* ``ccd_outcome`` gained the CCD worker's CPU split of the CCD (migration 5).
* ``ccd_claim`` -- which processor of the pool holds a CCD (:mod:`.claims`).

Database errors are mapped as in the APDB: unreachable -> ``DatabaseUnavailableError``
(retriable), anything else -> ``StorageError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import numpy as np

from base.db import Migration, Store, mapped_errors, migrate, q
from state.errors import InvalidInputError

from .latency import BUDGET_S, LatencySummary, latency_summary
from .model import (
    STAGE_DTYPE,
    STAGE_INDEX,
    STAGES,
    WORKER_CPU,
    Attempt,
    CcdOutcome,
    NightRecords,
    StageTime,
    VisitRecord,
)

_OUTCOME_COLS = (
    "attempt",
    "status",
    "failure_type",
    "reason",
    "recovery",
    "n_dia_sources",
    "n_alerts",
    "zeropoint",
    "sky_level",
    "seeing_arcsec",
    "psf_fwhm_px",
    "astrom_rms_mas",
    "n_sources",
    "flags",
    *WORKER_CPU,
)


#: The prompt-processing records; frozen DDL: append, never edit a released step.
STORE = Store(
    "prompt",
    (
        Migration(
            1,
            "visit, stage_time, ccd_outcome, ccd_attempt",
            """
CREATE TABLE IF NOT EXISTS {schema}.visit (
    visit bigint PRIMARY KEY, day_obs integer NOT NULL, camera text NOT NULL,
    band text NOT NULL, ra double precision NOT NULL, dec double precision NOT NULL,
    obs_mjd double precision NOT NULL, exposure_time float8 NOT NULL,
    n_detectors integer NOT NULL, field_id integer,
    recorded_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS visit_day_obs ON {schema}.visit (day_obs);
CREATE TABLE IF NOT EXISTS {schema}.stage_time (
    visit bigint NOT NULL, detector integer NOT NULL, stage text NOT NULL,
    tai double precision NOT NULL, PRIMARY KEY (visit, detector, stage));
CREATE TABLE IF NOT EXISTS {schema}.ccd_outcome (
    visit bigint NOT NULL, detector integer NOT NULL, attempt integer NOT NULL,
    status text NOT NULL CHECK (status IN ('processed', 'failed', 'abandoned', 'skipped')),
    failure_type text, reason text NOT NULL, recovery text NOT NULL,
    n_dia_sources integer NOT NULL, n_alerts integer NOT NULL,
    zeropoint float8, sky_level float8, seeing_arcsec float8, psf_fwhm_px float8,
    astrom_rms_mas float8, n_sources integer, flags text[] NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (visit, detector));
CREATE TABLE IF NOT EXISTS {schema}.ccd_attempt (
    visit bigint NOT NULL, detector integer NOT NULL, attempt integer NOT NULL,
    status text NOT NULL CHECK (status IN ('processed', 'failed', 'abandoned', 'skipped')),
    failure_type text, reason text NOT NULL, recovery text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (visit, detector, attempt));
""",
        ),
        Migration(
            2,
            "ccd_alerts",
            """
CREATE TABLE IF NOT EXISTS {schema}.ccd_alerts (
    visit bigint NOT NULL, detector integer NOT NULL, n_alerts integer NOT NULL,
    PRIMARY KEY (visit, detector));
""",
        ),
        Migration(
            3,
            "ccd_claim: which processor of the pool holds a CCD (base.prompt_records.claims)",
            """
CREATE TABLE IF NOT EXISTS {schema}.ccd_claim (
    visit bigint NOT NULL, detector integer NOT NULL, owner text NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    state text NOT NULL CHECK (state IN ('running', 'done')),
    lease_until timestamptz NOT NULL, claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (visit, detector));
CREATE INDEX IF NOT EXISTS ccd_claim_lease ON {schema}.ccd_claim (lease_until)
    WHERE state = 'running';
""",
        ),
        Migration(
            4,
            "outcome status deferred (the overload policy's, for the daytime catch-up)",
            """
ALTER TABLE {schema}.ccd_outcome DROP CONSTRAINT IF EXISTS ccd_outcome_status_check;
ALTER TABLE {schema}.ccd_outcome ADD CONSTRAINT ccd_outcome_status_check CHECK
    (status IN ('processed', 'failed', 'abandoned', 'skipped', 'deferred'));
ALTER TABLE {schema}.ccd_attempt DROP CONSTRAINT IF EXISTS ccd_attempt_status_check;
ALTER TABLE {schema}.ccd_attempt ADD CONSTRAINT ccd_attempt_status_check CHECK
    (status IN ('processed', 'failed', 'abandoned', 'skipped', 'deferred'));
""",
        ),
        Migration(
            5,
            "ccd_outcome: the CCD worker's CPU split of the CCD (base.prompt.ccd_work.CPU_SPLIT)",
            """
ALTER TABLE {schema}.ccd_outcome ADD COLUMN IF NOT EXISTS cpu_preload_s float8,
    ADD COLUMN IF NOT EXISTS cpu_handoff_s float8, ADD COLUMN IF NOT EXISTS cpu_raw_s float8,
    ADD COLUMN IF NOT EXISTS pixel_cpu_s float8, ADD COLUMN IF NOT EXISTS cpu_outputs_s float8,
    ADD COLUMN IF NOT EXISTS cpu_rest_s float8, ADD COLUMN IF NOT EXISTS cpu_gc_s float8,
    ADD COLUMN IF NOT EXISTS minor_faults bigint,
    ADD COLUMN IF NOT EXISTS preload_minor_faults bigint;
""",
        ),
    ),
)


class PromptRecords:
    """The latency and outcome records of prompt processing in one PostgreSQL schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema

    @classmethod
    async def connect(cls, pool: asyncpg.Pool, schema: str = "prompt") -> PromptRecords:
        """Bring ``schema`` up to date (migrations) on ``pool``; the pool stays the caller's."""
        async with mapped_errors("prompt records connect"), pool.acquire() as conn:
            await migrate(conn, schema, STORE)
        return cls(pool, schema)

    def _t(self, name: str) -> str:
        return f"{q(self.schema)}.{q(name)}"

    # ---------------------------------------------------------------- writes
    async def record_visit(self, v: VisitRecord) -> None:
        """Insert or replace the visit's row (a repeat with the same values changes nothing)."""
        if not isinstance(v, VisitRecord):
            raise InvalidInputError(f"record_visit takes a VisitRecord, not {type(v).__name__}")
        async with mapped_errors("record_visit"), self._pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO {self._t('visit')} (visit, day_obs, camera, band, ra, dec,"
                " obs_mjd, exposure_time, n_detectors, field_id)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                " ON CONFLICT (visit) DO UPDATE SET day_obs = EXCLUDED.day_obs,"
                " camera = EXCLUDED.camera, band = EXCLUDED.band, ra = EXCLUDED.ra,"
                " dec = EXCLUDED.dec, obs_mjd = EXCLUDED.obs_mjd,"
                " exposure_time = EXCLUDED.exposure_time, n_detectors = EXCLUDED.n_detectors,"
                " field_id = EXCLUDED.field_id",
                v.visit,
                v.day_obs,
                v.camera,
                v.band,
                float(v.ra),
                float(v.dec),
                float(v.obs_mjd),
                float(v.exposure_time),
                v.n_detectors,
                v.field_id,
            )

    async def record_stages(self, rows: Sequence[StageTime]) -> int:
        """Record stage times in one statement; returns how many were new (first write wins)."""
        if not rows:
            return 0
        for r in rows:
            if not isinstance(r, StageTime):
                raise InvalidInputError(f"record_stages takes StageTime rows, not {r!r}")
        async with mapped_errors("record_stages"), self._pool.acquire() as conn:
            n = await conn.fetchval(
                f"WITH ins AS (INSERT INTO {self._t('stage_time')} (visit, detector, stage, tai)"
                " SELECT r.visit, r.detector, r.stage, r.tai FROM unnest($1::bigint[],"
                " $2::integer[], $3::text[], $4::double precision[])"
                " WITH ORDINALITY AS r(visit, detector, stage, tai, k)"
                " ORDER BY r.k"
                " ON CONFLICT (visit, detector, stage) DO NOTHING RETURNING 1)"
                " SELECT count(*) FROM ins",
                [r.visit for r in rows],
                [r.stored_detector for r in rows],
                [r.stage for r in rows],
                [float(r.tai) for r in rows],
            )
        return int(n)

    async def record_outcome(self, o: CcdOutcome) -> bool:
        """Upsert the CCD's outcome and log the attempt; False if a newer attempt is stored."""
        if not isinstance(o, CcdOutcome):
            raise InvalidInputError(f"record_outcome takes a CcdOutcome, not {type(o).__name__}")
        cols = ", ".join(_OUTCOME_COLS)
        params = ", ".join(f"${i}" for i in range(3, 3 + len(_OUTCOME_COLS)))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _OUTCOME_COLS)
        values = [getattr(o, c) for c in _OUTCOME_COLS]
        values[_OUTCOME_COLS.index("flags")] = list(o.flags)
        async with mapped_errors("record_outcome"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"WITH log AS (INSERT INTO {self._t('ccd_attempt')}"
                " (visit, detector, attempt, status, failure_type, reason, recovery)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (visit, detector, attempt) DO UPDATE SET status = EXCLUDED.status,"
                " failure_type = EXCLUDED.failure_type, reason = EXCLUDED.reason,"
                " recovery = EXCLUDED.recovery, recorded_at = now())"
                f" INSERT INTO {self._t('ccd_outcome')} AS t (visit, detector, {cols})"
                f" VALUES ($1, $2, {params})"
                f" ON CONFLICT (visit, detector) DO UPDATE SET {updates}, updated_at = now()"
                " WHERE EXCLUDED.attempt >= t.attempt RETURNING 1",
                o.visit,
                o.detector,
                *values,
            )
        return row is not None

    async def record_alerts(self, visit: int, detector: int, n_alerts: int, tai: float) -> bool:
        """The alert publisher's part: the ``alertsPublished`` stage and the CCD's alert count.

        One statement; the first write of both wins (a republished CCD changes nothing).
        ``fetch_night`` reports this count as the outcome's ``n_alerts``. Returns True if new.
        """
        row = StageTime(visit, detector, "alertsPublished", tai)
        if isinstance(n_alerts, bool) or not isinstance(n_alerts, int | np.integer) or n_alerts < 0:
            raise InvalidInputError(f"n_alerts must be an integer >= 0, not {n_alerts!r}")
        async with mapped_errors("record_alerts"), self._pool.acquire() as conn:
            found = await conn.fetchval(
                f"WITH st AS (INSERT INTO {self._t('stage_time')} (visit, detector, stage, tai)"
                " VALUES ($1, $2, 'alertsPublished', $4) ON CONFLICT DO NOTHING)"
                f" INSERT INTO {self._t('ccd_alerts')} (visit, detector, n_alerts)"
                " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                row.visit,
                row.stored_detector,
                int(n_alerts),
                row.tai,
            )
        return found is not None

    # ---------------------------------------------------------------- reads
    async def ccd_stages(self, visit: int, detector: int) -> dict[str, float]:
        """The stage times recorded for one CCD (what a restarted processor no longer holds)."""
        async with mapped_errors("ccd_stages"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT stage, tai FROM {self._t('stage_time')}"
                " WHERE visit = $1 AND detector = $2",
                visit,
                detector,
            )
        return {r["stage"]: float(r["tai"]) for r in rows}

    async def fetch_night(
        self, day_obs: int | None = None, visits: Sequence[int] | None = None
    ) -> NightRecords:
        """Everything recorded for the visits of ``day_obs``, or for the listed ``visits``.

        With ``day_obs``, a visit counts only if ``record_visit`` was called for it; with
        ``visits``, stage and outcome rows are returned even for visits without a visit row.
        """
        if (day_obs is None) == (visits is None):
            raise InvalidInputError("fetch_night needs exactly one of day_obs or visits")
        async with mapped_errors("fetch_night"), self._pool.acquire() as conn:
            if day_obs is not None:
                ids = await conn.fetchval(
                    f"SELECT coalesce(array_agg(visit), '{{}}') FROM {self._t('visit')}"
                    " WHERE day_obs = $1",
                    int(day_obs),
                )
            else:
                ids = [int(v) for v in visits or ()]
            vrows = await conn.fetch(
                f"SELECT * FROM {self._t('visit')} WHERE visit = ANY($1::bigint[])"
                " ORDER BY obs_mjd, visit",
                ids,
            )
            srows = await conn.fetchrow(
                "SELECT array_agg(visit ORDER BY visit, detector, stage),"
                " array_agg(detector ORDER BY visit, detector, stage),"
                " array_agg(stage ORDER BY visit, detector, stage),"
                " array_agg(tai ORDER BY visit, detector, stage)"
                f" FROM {self._t('stage_time')} WHERE visit = ANY($1::bigint[])",
                ids,
            )
            orows = await conn.fetch(
                f"SELECT o.*, a.n_alerts AS published FROM {self._t('ccd_outcome')} o"
                f" LEFT JOIN {self._t('ccd_alerts')} a USING (visit, detector)"
                " WHERE o.visit = ANY($1::bigint[]) ORDER BY visit, detector",
                ids,
            )
            arows = await conn.fetch(
                f"SELECT * FROM {self._t('ccd_attempt')} WHERE visit = ANY($1::bigint[])"
                " ORDER BY visit, detector, attempt",
                ids,
            )
        return NightRecords(
            visits=tuple(_visit(r) for r in vrows),
            stages=_stages(srows),
            outcomes=tuple(_outcome(r) for r in orows),
            attempts=tuple(
                Attempt(
                    r["visit"],
                    r["detector"],
                    r["attempt"],
                    r["status"],
                    r["failure_type"],
                    r["reason"],
                    r["recovery"],
                )
                for r in arows
            ),
            day_obs=day_obs,
        )

    async def latency_summary(
        self,
        day_obs: int | None = None,
        visits: Sequence[int] | None = None,
        budget_s: float = BUDGET_S,
    ) -> LatencySummary:
        return latency_summary(await self.fetch_night(day_obs, visits), budget_s)


def _visit(r: asyncpg.Record) -> VisitRecord:
    return VisitRecord(
        visit=r["visit"],
        day_obs=r["day_obs"],
        camera=r["camera"],
        band=r["band"],
        ra=r["ra"],
        dec=r["dec"],
        obs_mjd=r["obs_mjd"],
        exposure_time=r["exposure_time"],
        n_detectors=r["n_detectors"],
        field_id=r["field_id"],
    )


def _stages(r: asyncpg.Record | None) -> np.ndarray:
    if r is None or r[0] is None:
        return np.empty(0, STAGE_DTYPE)
    out = np.empty(len(r[0]), STAGE_DTYPE)
    out["visit"] = r[0]
    out["detector"] = r[1]
    out["stage"] = [STAGE_INDEX.get(s, -1) for s in r[2]]
    out["tai"] = r[3]
    unknown = out["stage"] < 0
    if unknown.any():
        bad = sorted({s for s in r[2] if s not in STAGE_INDEX})
        raise InvalidInputError(f"stage_time holds unknown stages {bad}; known: {STAGES}")
    return out


def _outcome(r: asyncpg.Record) -> CcdOutcome:
    values = {c: (tuple(r[c]) if c == "flags" else r[c]) for c in _OUTCOME_COLS}
    if r["published"] is not None:
        values["n_alerts"] = r["published"]
    return CcdOutcome(visit=r["visit"], detector=r["detector"], **values)
