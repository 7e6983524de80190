"""PostgreSQL for dmcs: an embedded private server by default, any server by DSN otherwise.

The embedded server (``pgserver``) is started with a bounded wait, reused when an earlier
process left it running, and supervised while dmcs holds it: a server that dies is started
again (logged as an error, counted in :attr:`EmbeddedPostgres.restarts`). pgserver keeps the
PIDs of the processes that hold a server in ``<data_dir>/.handle_pids.json`` and stops the
server only when the last of them lets go, so the PID of a process that was killed stays
there and would keep the server running for ever; those PIDs are pruned at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from base.db import redacted_dsn
from state.errors import ConfigurationError, StorageError

log = logging.getLogger("dmcs.postgres")

#: Seconds start-up waits for PostgreSQL unless told otherwise.
DEFAULT_START_TIMEOUT = 120.0
#: Seconds between two looks at the embedded server's postmaster.
SUPERVISE_INTERVAL = 1.0
HANDLE_FILE = ".handle_pids.json"


def _pgserver() -> Any:
    try:
        import pgserver
        import pgserver.postgres_server
    except ImportError as e:
        raise ConfigurationError(
            "the embedded PostgreSQL needs the 'pgserver' package; install it or give a DSN"
        ) from e
    return pgserver


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def prune_dead_handles(data_dir: Path) -> list[int]:
    """Drop the PIDs of processes that are gone from pgserver's handle file; return them."""
    path = data_dir / HANDLE_FILE
    if not path.is_file():
        return []
    with _pgserver().postgres_server.PostgresServer._lock:
        try:
            pids = [int(p) for p in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            return []
        dead = [p for p in pids if p != os.getpid() and not _alive(p)]
        if dead:
            path.write_text(json.dumps([p for p in pids if p not in dead]))
    return dead


def _postmaster(data_dir: Path) -> Any:
    """pgserver's reading of ``data_dir``'s postmaster.pid (None without one)."""
    return _pgserver().postgres_server.PostmasterInfo.read_from_pgdata(data_dir.resolve())


def postmaster_pid(data_dir: Path) -> int | None:
    """The PID of the server running on ``data_dir``, or None when none runs."""
    info = _postmaster(data_dir)
    if info is None or not info.is_running():
        return None
    return int(info.pid)


class EmbeddedPostgres:
    """A private PostgreSQL in ``data_dir`` (Unix socket only), supervised while held."""

    def __init__(
        self,
        data_dir: Path,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.start_timeout = start_timeout
        self.restarts: list[str] = []
        self._on_restart = on_restart
        self._server: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dsn(self) -> str:
        return str(self._server.get_uri())

    def start(self) -> str:
        """Start (or reuse) the server within ``start_timeout`` seconds; return its DSN."""
        pgserver = _pgserver()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        dead = prune_dead_handles(self.data_dir)
        running = postmaster_pid(self.data_dir)
        if dead:
            what = f"reusing it (pid {running})" if running else "it is not running; starting it"
            log.warning(
                "the embedded PostgreSQL in %s was held by process %s, which is gone; %s",
                self.data_dir,
                ", ".join(map(str, dead)),
                what,
            )
        elif running:
            log.warning(
                "reusing the PostgreSQL already running in %s (pid %d)", self.data_dir, running
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self._server = pgserver.get_server(str(self.data_dir), cleanup_mode="stop")
                break
            except Exception as e:  # pgserver raises bare Exceptions and asserts
                # A failed constructor stays registered; the next try must build a new one.
                pgserver.postgres_server.PostgresServer._instances.pop(self.data_dir, None)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageError(
                        f"the embedded PostgreSQL in {self.data_dir} did not start within "
                        f"{self.start_timeout:.0f} s: {e} (its log: {self.data_dir / 'log'})"
                    ) from e
                log.warning(
                    "the embedded PostgreSQL did not start yet (%s); retrying, %.0f s left", e, left
                )
                time.sleep(min(2.0, left))
        return self.dsn

    def supervise(self, interval: float = SUPERVISE_INTERVAL) -> None:
        """Watch the server from a thread and start it again whenever it dies."""
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name="postgres-supervisor", daemon=True
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        began: float | None = None  # when the server was found dead, until it is back
        while not self._stop.wait(interval):
            if began is None:
                if postmaster_pid(self.data_dir) is not None:
                    continue
                log.error("the embedded PostgreSQL in %s died; restarting it", self.data_dir)
                began = time.monotonic()
            if not self._restart():
                continue
            note = (
                f"PostgreSQL died and was restarted in {time.monotonic() - began:.1f} s "
                f"(pid {postmaster_pid(self.data_dir)})"
            )
            began = None
            log.warning(note)
            self.restarts.append(note)
            if self._on_restart is not None:
                self._on_restart(note)

    def _restart(self) -> bool:
        """One try at bringing the server back; True once it accepts connections.

        pgserver gives ``pg_ctl start`` 10 s; crash recovery on a loaded machine can take
        longer, and the server it started then becomes ready after the timeout. A later try
        adopts that server (pgserver reuses a running postmaster) instead of starting another.
        """
        info = _postmaster(self.data_dir)
        if info is not None and info.is_running() and info.status != "ready":
            return False  # still recovering from the crash
        try:
            with self._server._lock:
                # Also lets the server's user traverse to the data directory again (as
                # root, pgserver runs it as another user; a parent may have been chmod'ed).
                self._server.ensure_pgdata_inited()
                self._server.ensure_postgres_running()
        except Exception as e:  # noqa: BLE001 (pgserver raises bare Exceptions and asserts)
            log.error("restarting the embedded PostgreSQL failed (%s); will try again", e)
            return False
        return True

    def stop(self) -> None:
        """Stop supervising, then stop the server unless another live process holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._server is None:
            return
        server, self._server = self._server, None
        live = _postmaster(self.data_dir)
        if live is not None and live.is_running():
            server._postmaster_info = live  # a server started since the handle was taken
        try:
            server.cleanup()
        except psutil.NoSuchProcess:
            # Died between pgserver's liveness check and its signal (killed as the run ended).
            log.warning("the embedded PostgreSQL in %s was already gone at exit", self.data_dir)


@contextlib.contextmanager
def embedded_postgres(
    data_dir: Path,
    *,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    supervise: bool = True,
    on_restart: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Start (or reuse) a private PostgreSQL in ``data_dir`` and yield its DSN.

    The server listens on a Unix socket only, so nothing outside this machine can reach it.
    It is restarted if it dies while held (``supervise``), and stopped when the context exits
    unless another live process still uses it.
    """
    server = EmbeddedPostgres(data_dir, start_timeout=start_timeout, on_restart=on_restart)
    dsn = server.start()
    try:
        if supervise:
            server.supervise()
        yield dsn
    finally:
        server.stop()


@contextlib.contextmanager
def postgres_dsn(
    dsn: str | None,
    data_dir: Path,
    *,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    on_restart: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Yield ``dsn`` when one is configured, else the DSN of an embedded server in ``data_dir``."""
    if dsn:
        yield dsn
        return
    with embedded_postgres(
        data_dir, start_timeout=start_timeout, on_restart=on_restart
    ) as embedded:
        yield embedded


#: Answers of a server that may yet accept: starting up, full, slow.
_NOT_YET = (
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    TimeoutError,
    ConnectionResetError,
)


async def wait_for_database(
    dsn: str, timeout: float = DEFAULT_START_TIMEOUT, *, starting: bool = False
) -> None:
    """Return once PostgreSQL at ``dsn`` accepts a connection, else raise ``StorageError``.

    A server starting up, full or slow is waited for up to ``timeout`` seconds. Nothing
    listening at the address (connection refused, no socket, unknown host) or a refusal of
    the login (password, database) fails at once, unless ``starting``: a server this process
    has just started (or restarted) may not listen yet.
    """
    deadline = time.monotonic() + timeout
    delay = 0.2
    where = f"PostgreSQL at {redacted_dsn(dsn)}"
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=max(1.0, min(10.0, timeout)))
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            if not starting and not isinstance(e, _NOT_YET):
                what = "is not reachable" if isinstance(e, OSError) else "refused the login"
                raise StorageError(f"{where} {what}: {e}") from e
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(
                    f"{where} did not accept a connection within {timeout:.0f} s: {e}"
                ) from e
            log.warning("waiting for PostgreSQL (%s); %.0f s left", e, left)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)
            continue
        await conn.close()
        return
