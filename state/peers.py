"""Data-plane calls between components: bulk data and requests that are not OCS commands.

Commands and events go through the control plane (acks, the bus). Moving a raw from the
summit buffer to ingest, or a CCD's DIASources to association, is a direct call to a method
named ``rpc_<method>`` on the peer component. A component reaches its peers through a
:class:`Peers` resolver it is given: on Ray it is ``actors.peers.RayPeers``; without Ray,
:class:`LocalPeers` calls plain objects in the same loop, so components stay testable alone.

A peer that cannot be reached (down, restarting) raises ``ConnectionLostError``; whatever the
remote method raised is re-raised as it was when it is a ``DmcsError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from state.errors import ConfigurationError, ConnectionLostError


class Peer(Protocol):
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


class Peers(Protocol):
    def __call__(self, name: str) -> Peer: ...


def rpc_method(target: object, method: str) -> Any:
    """The bound ``rpc_<method>`` of ``target``, or a clear error."""
    fn = getattr(target, f"rpc_{method}", None)
    if fn is None or not callable(fn):
        raise ConfigurationError(f"{type(target).__name__} has no data-plane method {method!r}")
    return fn


class _LocalPeer:
    def __init__(self, peers: LocalPeers, name: str) -> None:
        self._peers = peers
        self._name = name

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        target = self._peers.components.get(self._name)
        if target is None or self._name in self._peers.down:
            raise ConnectionLostError(f"peer {self._name!r} is not reachable")
        return await rpc_method(target, method)(*args, **kwargs)


class LocalPeers:
    """Peers in the same process (tests, tools). ``down`` simulates an unreachable peer."""

    def __init__(self, components: Mapping[str, object] | None = None) -> None:
        self.components: dict[str, object] = dict(components or {})
        self.down: set[str] = set()

    def __call__(self, name: str) -> Peer:
        return _LocalPeer(self, name)


class NoPeers:
    """The default: a component that was given no peers cannot call any."""

    def __call__(self, name: str) -> Peer:
        raise ConfigurationError(f"no data-plane peers configured (wanted {name!r})")
