"""The one PostgreSQL layer of dmcs: pool factory, error mapping, migration runner.

Every PostgreSQL store (registry, APDB and its alert outbox, prompt records, alert archive,
reprocessing ledger) opens its pool with :func:`connect_pool`, wraps its queries in
:func:`mapped_errors`, and declares its tables as a :class:`Store` of frozen migrations that
:func:`migrate` checks and applies at connect. The SQLite stores are versioned the same way
by ``state.durable_sqlite`` (the summit layer uses them and cannot import ``base``).
"""

from state.errors import (
    DatabaseUnavailableError,
    IncompatibleDatabaseError,
    TransactionConflictError,
)

from .errors import mapped_errors
from .migrate import Migration, Store, migrate, q, recorded
from .pool import connect_pool, redacted_dsn

__all__ = [
    "DatabaseUnavailableError",
    "IncompatibleDatabaseError",
    "Migration",
    "Store",
    "TransactionConflictError",
    "connect_pool",
    "mapped_errors",
    "migrate",
    "q",
    "recorded",
    "redacted_dsn",
]
