"""Data-plane peers on Ray: ``rpc_<method>`` calls on other component actors by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from actors.runtime import NAMESPACE, actor_name
from state.errors import ConnectionLostError, DmcsError, PeerFailedError


class ActorPeer:
    """A :class:`~state.peers.Peer` over a component actor: a dmcs error raised by the remote
    method is re-raised as it was, any other as ``PeerFailedError``; an unreachable actor is
    ``ConnectionLostError`` (and ``on_lost`` is called, so a resolver can look it up again)."""

    def __init__(
        self,
        name: str,
        resolve: Callable[[], ActorHandle],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._name = name
        self._resolve = resolve
        self._on_lost = on_lost

    @classmethod
    def of_handle(cls, name: str, handle: ActorHandle) -> ActorPeer:
        """A peer over a handle the caller holds (the gateway's)."""
        return cls(name, lambda: handle)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        handle = self._resolve()
        try:
            return await handle.rpc.remote(method, *args, **kwargs)
        except RayTaskError as e:
            # The remote error itself, not ``as_instanceof_cause()``: that one's text is the
            # whole remote traceback, which would reach whoever is told why (a broker's 503).
            if isinstance(e.cause, DmcsError):
                raise e.cause from e
            raise PeerFailedError(f"{self._name}.{method} failed: {e.cause!r}") from e
        except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
            if self._on_lost is not None:
                self._on_lost()
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

    def __call__(self, name: str) -> ActorPeer:
        return ActorPeer(name, lambda: self.handle(name), lambda: self.forget(name))
