"""The one mapping of asyncpg/OS errors into the dmcs error hierarchy (``state.errors``).

* connection refused/lost, timed out, too many connections, server shutting down
  -> :class:`DatabaseUnavailableError` (a ``ConnectionLostError``, retriable);
* serialization failure, deadlock -> :class:`TransactionConflictError` (retriable);
* any other database error -> ``StorageError`` (not retriable).

dmcs errors raised inside the block (an ``IncompatibleDatabaseError``, say) pass unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from state.errors import DatabaseUnavailableError, StorageError, TransactionConflictError

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    # A connection left mid-operation (a query cancelled by a timeout, a server gone).
    asyncpg.InternalClientError,
)
_CONFLICT = (asyncpg.exceptions.TransactionRollbackError,)


@contextlib.asynccontextmanager
async def mapped_errors(what: str) -> AsyncIterator[None]:
    """Translate asyncpg/OS errors raised inside the block into dmcs errors naming ``what``."""
    try:
        yield
    except _CONFLICT as e:
        raise TransactionConflictError(f"{what}: {e}") from e
    except _UNAVAILABLE as e:
        raise DatabaseUnavailableError(f"{what}: database unavailable: {e}") from e
    except asyncpg.PostgresError as e:
        raise StorageError(f"{what}: {type(e).__name__}: {e}") from e
