"""The Alert Production Database (APDB): Rubin's apdb.yaml tables on PostgreSQL via asyncpg."""

from .apdb import MIGRATIONS, Apdb, Preload, StoreResult
from .db import DatabaseUnavailableError, TransactionConflictError
from .ids import IdPacker
from .spatial import ORDER, Region, pixel_ids

__all__ = [
    "MIGRATIONS",
    "ORDER",
    "Apdb",
    "DatabaseUnavailableError",
    "IdPacker",
    "Preload",
    "Region",
    "StoreResult",
    "TransactionConflictError",
    "pixel_ids",
]
