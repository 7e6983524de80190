"""The Alert Production Database (APDB): Rubin's apdb.yaml tables on PostgreSQL via asyncpg."""

from state.errors import DatabaseUnavailableError, TransactionConflictError

from .apdb import Apdb, Preload, StoreResult, store_spec
from .ids import IdPacker
from .spatial import ORDER, Region, pixel_ids

__all__ = [
    "ORDER",
    "Apdb",
    "DatabaseUnavailableError",
    "IdPacker",
    "Preload",
    "Region",
    "StoreResult",
    "TransactionConflictError",
    "pixel_ids",
    "store_spec",
]
