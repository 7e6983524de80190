"""Data-plane peers on Ray: ``rpc_<method>`` calls on other component actors by name."""

from __future__ import annotations

from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from actors.runtime import NAMESPACE, actor_name
from state.errors import ConnectionLostError, DmcsError, PeerFailedError


class _RayPeer:
    def __init__(self, peers: RayPeers, name: str) -> None:
        self._peers = peers
        self._name = name

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        handle = self._peers.handle(self._name)
        try:
            return await handle.rpc.remote(method, *args, **kwargs)
        except RayTaskError as e:
            cause = e.as_instanceof_cause()
            if isinstance(cause, DmcsError):
                raise cause from e
            raise PeerFailedError(f"{self._name}.{method} failed: {e.cause!r}") from e
        except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
            self._peers.forget(self._name)
            raise ConnectionLostError(f"peer {self._name!r} is not reachable: {e}") from e


class RayPeers:
    """Resolves component names of one system to actor handles, cached, re-resolved on loss."""

    def __init__(self, system: str) -> None:
        self._system = system
        self._handles: dict[str, ActorHandle] = {}

    def handle(self, name: str) -> ActorHandle:
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = ray.get_actor(actor_name(self._system, name), namespace=NAMESPACE)
            except ValueError as e:
                raise ConnectionLostError(f"peer {name!r} does not exist (yet)") from e
            self._handles[name] = handle
        return handle

    def forget(self, name: str) -> None:
        self._handles.pop(name, None)

    def __call__(self, name: str) -> _RayPeer:
        return _RayPeer(self, name)
