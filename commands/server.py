"""Runs a whole dmcs: Ray, the configured components and the gateway, as one context."""

from __future__ import annotations

import contextlib
import errno
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
    sockets are bound first (every address of its host), so a port in use is said before
    anything starts.
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
        listening(config.gateway.host, gateway_port) as socks,
        system_database(config) as wired,
    ):
        async with _serve(wired, tokens, socks, address=address) as running:
            yield running


#: A resolved address this machine does not have (``localhost``'s ``::1`` without IPv6):
#: skipped, as long as another address of the host name is bound.
_ABSENT = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


@contextlib.contextmanager
def listening(host: str, port: int) -> Iterator[list[socket.socket]]:
    """Listening sockets for the gateway on every address ``host`` resolves to (as
    ``asyncio.create_server`` binds a host name), closed on exit; StartupError if one cannot be
    bound (a port in use) or none can. ``port=0``: one free port, the same on every address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise StartupError(f"the gateway cannot listen on {host}:{port}: {e}") from e
    with contextlib.ExitStack() as stack:
        socks: list[socket.socket] = []
        absent: OSError | None = None
        for family, kind, proto, _, resolved in dict.fromkeys(infos):
            address = resolved
            if socks and port == 0:
                address = (resolved[0], socks[0].getsockname()[1], *resolved[2:])
            try:
                sock = stack.enter_context(socket.socket(family, kind, proto))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # its own socket, as asyncio: no dual stack
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(128)
                sock.setblocking(False)
            except OSError as e:
                if e.errno in _ABSENT:
                    absent = e
                    continue
                why = e.strerror or str(e)
                raise StartupError(
                    f"the gateway cannot listen on {host}:{port}: {why} (another dmcs run?"
                    " give --port)"
                ) from e
            socks.append(sock)
        if not socks:
            raise StartupError(f"the gateway cannot listen on {host}:{port}: {absent}")
        yield socks


@contextlib.asynccontextmanager
async def _serve(
    config: SystemConfig,
    tokens: dict[str, str],
    socks: list[socket.socket],
    *,
    address: str | None,
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
        for sock in socks:
            await web.SockSite(runner, sock).start()
        bound = runner.addresses[0][1]
        yield RunningSystem(system, app, host, bound, config.database.dsn)
    finally:
        if runner is not None:
            await runner.cleanup()
        await system.close()
