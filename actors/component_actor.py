"""Binds a plain component class to Ray: one async actor per component."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from actors.bus import follow_bus
from actors.ordered_sender import OrderedSender
from actors.peers import RayPeers
from actors.runtime import NAMESPACE, bus_name
from config.components import OVERRIDES_DIR
from state.command import Command
from state.controller import Controller
from state.errors import ConfigurationError
from state.events import Event
from state.patience import call_patiently
from state.peers import rpc_method

log = logging.getLogger("dmcs.actors")

#: Once an event for a component reaches its empty queue at the bus, the bus waits this long
#: for those that follow before answering the component's poll: the per-CCD events a processor,
#: Ingest or AlertPublisher hears (a focal plane's 189 ``imageInBuffer``/``imageIngested``/
#: ``ccdProcessed`` in bursts) then cost one poll (a Ray call through bus, Ray and the actor)
#: per burst instead of one each; each hop to a component is up to this much later.
LISTEN_LINGER_S = 0.02
#: How long a restarted component waits for the bus to count its restart: the bus may be
#: restarting too (Ray's memory monitor, or a lost node, takes several actors at once), and a
#: component that gave up at once never started again.
RESTART_COUNT_WAIT_S = 60.0


async def count_restart(
    note: Callable[[], Awaitable[int]], name: str, wait: float = RESTART_COUNT_WAIT_S
) -> int:
    """``note()`` (the bus's count of ``name``'s restarts), tried again while the bus is away."""

    def retrying(e: BaseException) -> None:
        log.warning("%s: the bus cannot count its restart yet (%s); retrying", name, e)

    count = await call_patiently(
        note, RayError, patience=wait, on_retry=retrying, delay=0.1, max_delay=2.0
    )
    return int(count)


def load_component_class(path: str) -> type[Controller]:
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"cannot load component class {path!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Controller)):
        raise ConfigurationError(f"{path!r} is not a Controller subclass")
    return cls


class ComponentActor:
    """Runs one component in the actor's event loop; restarts come back in STANDBY."""

    def __init__(
        self, system: str, spec: dict[str, Any], heartbeat_interval: float, data_dir: str
    ) -> None:
        self._spec = spec
        self._system = system
        self._bus = ray.get_actor(bus_name(system), namespace=NAMESPACE)
        self._outbox = OrderedSender(self._bus.publish_many.remote, f"{spec['name']}-events")
        with warnings.catch_warnings():  # Ray's own property uses a deprecated one inside
            warnings.simplefilter("ignore", DeprecationWarning)
            self._restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._component: Controller | None = None
        self._held: frozenset[str] = frozenset()
        self._failure: Exception | None = None
        self._ready = asyncio.Event()
        self._main = asyncio.get_running_loop().create_task(
            self._run(heartbeat_interval, Path(data_dir)), name=f"{spec['name']}-actor"
        )

    async def _run(self, heartbeat_interval: float, data_dir: Path) -> None:
        spec = self._spec
        try:
            name = spec["name"]
            restart_count = (
                await count_restart(lambda: self._bus.note_restart.remote(name), name)
                if self._restarted
                else 0
            )
            component = self._build(spec, heartbeat_interval, data_dir, restart_count)
        except Exception as e:  # reported to every caller instead of leaving them waiting
            self._failure = e
            self._ready.set()
            raise
        self._component = component
        await component.start()
        self._ready.set()
        try:
            if component.listen_components:
                await self._feed(component)
            else:
                await asyncio.Event().wait()
        finally:
            await component.close()

    def _build(
        self, spec: dict[str, Any], heartbeat_interval: float, data_dir: Path, restart_count: int
    ) -> Controller:
        cls = load_component_class(spec["class"])
        self._held = frozenset(cls.held_topics)
        return cls(
            spec["name"],
            sink=self._publish,
            authorized=tuple(spec.get("authorized", ())),
            heartbeat_interval=heartbeat_interval,
            queue_size=int(spec.get("queue_size", 16)),
            command_timeout=float(spec.get("command_timeout", 60.0)),
            restart_count=restart_count,
            settings=spec.get("settings") or {},
            data_dir=data_dir / spec["name"],
            peers=RayPeers(self._system),
            overrides_dir=OVERRIDES_DIR,
        )

    def _publish(self, event: Event) -> None:
        held = event.kind == "telemetry" or event.topic == "heartbeat" or event.topic in self._held
        self._outbox.put(event.to_wire(), urgent=not held)

    async def _feed(self, component: Controller) -> None:
        """Deliver the bus topics the component listens to; of the snapshot, telemetry only."""

        async def deliver(wire: dict[str, Any], snapshot: bool) -> None:
            if not snapshot or wire.get("kind") == "telemetry":
                await component.deliver(Event.from_wire(wire))

        await follow_bus(
            self._bus, component.name, component.listen_filter, deliver, log=log,
            linger=LISTEN_LINGER_S,
        ).run()  # fmt: skip

    async def _component_ready(self) -> Controller:
        await self._ready.wait()
        if self._component is None:
            raise ConfigurationError(
                f"component {self._spec['name']} could not start: {self._failure}"
            ) from self._failure
        return self._component

    async def command(self, wire: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream the command's acks (call with ``num_returns="streaming"``)."""
        component = await self._component_ready()
        async for ack in component.handle(Command.from_wire(wire)):
            yield ack.to_wire()

    async def rpc(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A data-plane call: ``rpc_<method>`` on the component (see ``state.peers``)."""
        component = await self._component_ready()
        return await rpc_method(component, method)(*args, **kwargs)

    async def snapshot(self) -> dict[str, Any]:
        component = await self._component_ready()
        return component.snapshot()

    async def pid(self) -> int:
        return os.getpid()

    async def shutdown(self) -> None:
        self._main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._main
        await self._outbox.close()
