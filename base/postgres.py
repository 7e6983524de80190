"""PostgreSQL for dmcs: an embedded private server by default, any server by DSN otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from state.errors import ConfigurationError, StorageError


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) a private PostgreSQL in ``data_dir`` and yield its DSN.

    The server listens on a Unix socket only, so nothing outside this machine can reach it.
    It is stopped when the context exits unless another process still uses it.
    """
    try:
        import pgserver
    except ImportError as e:
        raise ConfigurationError(
            "the embedded PostgreSQL needs the 'pgserver' package; install it or give a DSN"
        ) from e
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    except Exception as e:  # pgserver raises bare Exception subclasses from its subprocess calls
        raise StorageError(f"could not start the embedded PostgreSQL in {data_dir}: {e}") from e
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.contextmanager
def postgres_dsn(dsn: str | None, data_dir: Path) -> Iterator[str]:
    """Yield ``dsn`` when one is configured, else the DSN of an embedded server in ``data_dir``."""
    if dsn:
        yield dsn
        return
    with embedded_postgres(data_dir) as embedded:
        yield embedded
