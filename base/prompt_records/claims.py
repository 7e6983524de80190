"""Who processes a CCD: claims with a lease, in PostgreSQL, shared by the processor pool.

Table ``ccd_claim`` (in the prompt records schema, created by the prompt records store's
migration 3, :data:`base.prompt_records.store.STORE`): (visit, detector) -> owner, attempt,
state, lease expiry.

* :meth:`ClaimStore.claim` is one ``INSERT … ON CONFLICT DO UPDATE … WHERE``: it takes a CCD
  nobody holds (attempt 1), one whose holder's lease expired (a takeover: attempt + 1), or one
  the caller already holds (its own retry, or its restart under the same name: attempt + 1).
  PostgreSQL locks the conflicting row and re-checks the condition on its newest version, so
  of two processors claiming at once exactly one wins: a CCD is never held by two.
* A holder renews the leases of the claims it is working on in one statement
  (:meth:`ClaimStore.renew`); one that died or stopped stops renewing, and its claims expire.
  Only the claims the holder names are renewed: a processor restarted under the same name does
  not keep alive, by its name, the claims of its dead incarnation; it finds them with
  :meth:`ClaimStore.orphaned` and takes them up again or settles them.
* :meth:`ClaimStore.settle` marks the CCD done (processed, failed or abandoned); a settled
  claim is never taken again.

Database errors are mapped as elsewhere: unreachable -> ``DatabaseUnavailableError``
(retriable), anything else -> ``StorageError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from base.db import mapped_errors, migrate, q
from state.errors import InvalidInputError

from .store import STORE


@dataclass(frozen=True)
class Claim:
    visit: int
    detector: int
    owner: str
    attempt: int
    state: str


class ClaimStore:
    """The processing claims of one prompt records schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._table = f"{q(schema)}.ccd_claim"

    @classmethod
    async def connect(cls, pool: asyncpg.Pool, schema: str = "prompt") -> ClaimStore:
        """Bring ``schema`` up to date (the prompt records' migrations, which hold the claims
        table); the pool stays the caller's."""
        async with mapped_errors("claims connect"), pool.acquire() as conn:
            await migrate(conn, schema, STORE)
        return cls(pool, schema)

    @staticmethod
    def _check(owner: str, lease: float) -> None:
        if not owner:
            raise InvalidInputError("a claim needs an owner")
        if not lease > 0:
            raise InvalidInputError(f"a claim's lease must be positive seconds, not {lease!r}")

    async def claim(self, visit: int, detector: int, owner: str, lease: float) -> int | None:
        """Hold (visit, detector) for ``lease`` seconds; its attempt number, or None when
        another live holder has it or it is settled."""
        self._check(owner, lease)
        async with mapped_errors("claim"), self._pool.acquire() as conn:
            attempt = await conn.fetchval(
                f"INSERT INTO {self._table} AS c"
                " (visit, detector, owner, attempt, state, lease_until)"
                " VALUES ($1, $2, $3, 1, 'running', now() + make_interval(secs => $4))"
                " ON CONFLICT (visit, detector) DO UPDATE SET owner = EXCLUDED.owner,"
                " attempt = c.attempt + 1, lease_until = EXCLUDED.lease_until,"
                " claimed_at = now()"
                " WHERE c.state = 'running'"
                " AND (c.owner = EXCLUDED.owner OR c.lease_until < now())"
                " RETURNING c.attempt",
                visit,
                detector,
                owner,
                float(lease),
            )
        return None if attempt is None else int(attempt)

    async def renew(
        self, owner: str, lease: float, keys: list[tuple[int, int]]
    ) -> set[tuple[int, int]]:
        """Extend the running claims of ``owner`` on ``keys``; those it still holds."""
        self._check(owner, lease)
        if not keys:
            return set()
        async with mapped_errors("renew claims"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"UPDATE {self._table} c SET lease_until = now() + make_interval(secs => $2)"
                " FROM unnest($3::bigint[], $4::integer[]) AS k(visit, detector)"
                " WHERE c.visit = k.visit AND c.detector = k.detector"
                " AND c.owner = $1 AND c.state = 'running' RETURNING c.visit, c.detector",
                owner,
                float(lease),
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        return {(int(r["visit"]), int(r["detector"])) for r in rows}

    async def orphaned(
        self, owner: str, held: list[tuple[int, int]], limit: int = 256
    ) -> list[tuple[int, int]]:
        """Running claims under ``owner``'s name other than ``held``: an earlier incarnation's
        (it died holding them, or its settle never reached the database)."""
        async with mapped_errors("orphaned claims"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT visit, detector FROM {self._table}"
                " WHERE owner = $1 AND state = 'running'"
                " AND (visit, detector) NOT IN"
                " (SELECT * FROM unnest($2::bigint[], $3::integer[]))"
                " ORDER BY visit, detector LIMIT $4",
                owner,
                [k[0] for k in held],
                [k[1] for k in held],
                limit,
            )
        return [(int(r["visit"]), int(r["detector"])) for r in rows]

    async def holds(self, visit: int, detector: int, owner: str, lease: float) -> bool:
        """Renew one claim; False when ``owner`` no longer holds it (it was taken over)."""
        self._check(owner, lease)
        async with mapped_errors("renew claim"), self._pool.acquire() as conn:
            held = await conn.fetchval(
                f"UPDATE {self._table} SET lease_until = now() + make_interval(secs => $4)"
                " WHERE visit = $1 AND detector = $2 AND owner = $3 AND state = 'running'"
                " RETURNING 1",
                visit,
                detector,
                owner,
                float(lease),
            )
        return held is not None

    async def settle(self, visit: int, detector: int, owner: str) -> bool:
        """Mark the CCD done; False when ``owner`` did not hold it."""
        async with mapped_errors("settle claim"), self._pool.acquire() as conn:
            done = await conn.fetchval(
                f"UPDATE {self._table} SET state = 'done', lease_until = now()"
                " WHERE visit = $1 AND detector = $2 AND owner = $3 AND state = 'running'"
                " RETURNING 1",
                visit,
                detector,
                owner,
            )
        return done is not None

    async def taken(self, keys: list[tuple[int, int]], owner: str) -> set[tuple[int, int]]:
        """Those of ``keys`` that are done, or that another than ``owner`` holds (live lease)."""
        if not keys:
            return set()
        async with mapped_errors("read claims"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT c.visit, c.detector FROM {self._table} c"
                " JOIN unnest($1::bigint[], $2::integer[]) AS k(visit, detector)"
                " USING (visit, detector)"
                " WHERE c.state = 'done' OR (c.owner <> $3 AND c.lease_until >= now())",
                [k[0] for k in keys],
                [k[1] for k in keys],
                owner,
            )
        return {(int(r["visit"]), int(r["detector"])) for r in rows}

    async def expired(self, limit: int = 256) -> list[tuple[int, int]]:
        """Running claims whose lease ran out (their holder died or stopped), oldest first."""
        async with mapped_errors("expired claims"), self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT visit, detector FROM {self._table}"
                " WHERE state = 'running' AND lease_until < now()"
                " ORDER BY visit, detector LIMIT $1",
                limit,
            )
        return [(int(r["visit"]), int(r["detector"])) for r in rows]

    async def get(self, visit: int, detector: int) -> Claim | None:
        async with mapped_errors("read claim"), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT visit, detector, owner, attempt, state FROM {self._table}"
                " WHERE visit = $1 AND detector = $2",
                visit,
                detector,
            )
        return None if row is None else Claim(*row)
