"""Runs a whole dmcs: Ray, the configured components and the gateway, as one context."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from aiohttp import web

from actors.launcher import System, check_components, launch
from actors.runtime import init_ray
from commands.database import check_configured_database, system_database
from commands.gateway import make_app
from config.system import SystemConfig, load_tokens
from state.errors import ConfigurationError, StartupError


@dataclass(frozen=True)
class RunningSystem:
    system: System
    app: web.Application
    host: str
    port: int
    #: The system's PostgreSQL (the embedded one's, when dmcs started it).
    dsn: str = ""

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def serve(
    config: SystemConfig, *, address: str | None = None, port: int | None = None
) -> AsyncIterator[RunningSystem]:
    """Start everything, yield while it runs, and stop everything on exit.

    ``port=0`` picks a free port (tests); ``None`` takes the configured one. Components
    that use the database get its DSN (an embedded PostgreSQL when none is configured).
    What can be checked without starting anything is checked first: the component classes and
    settings, the tokens file, the data directory and a configured DSN; and the gateway's
    socket is bound first, so a port in use is said before anything starts.
    """
    check_components(config)
    tokens = load_tokens(config.gateway.tokens_file)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(f"data_dir {config.data_dir} cannot be created: {e}") from e
    await check_configured_database(config)
    gateway_port = config.gateway.port if port is None else port
    with (
        listening(config.gateway.host, gateway_port) as sock,
        system_database(config) as wired,
    ):
        async with _serve(wired, tokens, sock, address=address) as running:
            yield running


@contextlib.contextmanager
def listening(host: str, port: int) -> Iterator[socket.socket]:
    """A listening socket for the gateway (closed on exit); StartupError if it cannot bind."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise StartupError(f"the gateway cannot listen on {host}:{port}: {e}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        why = e.strerror or str(e)
        raise StartupError(
            f"the gateway cannot listen on {host}:{port}: {why} (another dmcs run? give --port)"
        ) from e
    with sock:
        yield sock


@contextlib.asynccontextmanager
async def _serve(
    config: SystemConfig, tokens: dict[str, str], sock: socket.socket, *, address: str | None
) -> AsyncIterator[RunningSystem]:
    init_ray(address, batch_slots=config.batch_slots, timeout=config.startup_timeout)
    system = launch(config)
    runner: web.AppRunner | None = None
    try:
        await system.wait_ready(config.startup_timeout)
        app = make_app(
            config.gateway,
            system.components,
            system.bus,
            tokens,
            component_configs=config.components,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host = config.gateway.host
        await web.SockSite(runner, sock).start()
        bound = runner.addresses[0][1]
        yield RunningSystem(system, app, host, bound, config.database.dsn)
    finally:
        if runner is not None:
            await runner.cleanup()
        await system.close()
