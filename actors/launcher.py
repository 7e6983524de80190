"""Starts the configured system on Ray: the event bus and one actor per component."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.bus import EventBus
from actors.component_actor import ComponentActor, load_component_class
from actors.runtime import (
    NAMESPACE,
    ROLE_CAPACITY,
    ROLE_SHARE,
    actor_name,
    bus_name,
    role_resource,
)
from config.system import SystemConfig
from state.errors import ConfigurationError, StartupError
from state.settings import validate_settings

log = logging.getLogger("dmcs.launcher")

#: Seconds between two "waiting for ... to come up" messages at start-up.
WAIT_REPORT_SECONDS = 15.0
#: Seconds the components get to close (tasks cancelled, last events sent) before they are killed.
CLOSE_GRACE_SECONDS = 15.0

RemoteBus = ray.remote(EventBus)
RemoteComponent = ray.remote(ComponentActor)


@dataclass
class System:
    """Handles to a running system. Create with :func:`launch`; end with :meth:`close`."""

    config: SystemConfig
    bus: ActorHandle
    components: dict[str, ActorHandle] = field(default_factory=dict)

    def handle(self, name: str) -> ActorHandle:
        try:
            return self.components[name]
        except KeyError as e:
            raise ConfigurationError(f"unknown component {name!r}") from e

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every component answers (it has come up in STANDBY).

        StartupError after ``timeout`` seconds, naming the components that never answered.
        """
        calls = {
            name: asyncio.ensure_future(h.snapshot.remote()) for name, h in self.components.items()
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = set(calls.values())
        while pending and (left := deadline - loop.time()) > 0:
            _, pending = await asyncio.wait(pending, timeout=min(WAIT_REPORT_SECONDS, left))
            if pending and deadline > loop.time():
                waiting = sorted(name for name, call in calls.items() if call in pending)
                log.warning(
                    "waiting for %s to come up (%.0f s left)",
                    ", ".join(waiting),
                    deadline - loop.time(),
                )
        for call in pending:
            call.cancel()
        if pending:
            silent = sorted(name for name, call in calls.items() if call in pending)
            raise StartupError(
                f"{len(silent)} of {len(calls)} components did not come up within "
                f"{timeout:.0f} s: {', '.join(silent)} (raise startup_timeout on a loaded machine)"
            )
        for call in calls.values():
            call.result()

    async def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Close every component while the bus still runs, then kill the actors.

        A component closes by cancelling its own tasks and sending its last events, so none is
        left pending in a process that is killed under it; one that does not close within
        ``grace`` seconds is killed as it is.
        """
        calls = {
            asyncio.ensure_future(h.shutdown.remote()): name for name, h in self.components.items()
        }
        if calls:
            done, pending = await asyncio.wait(calls, timeout=grace)
            for call in pending:
                call.cancel()
                log.warning("%s did not close within %.0f s; killed", calls[call], grace)
            for call in done:
                if (error := call.exception()) is not None:
                    log.warning("%s did not close cleanly: %s", calls[call], error)
        self.stop()

    def stop(self) -> None:
        """Kill the component actors and the bus at once (see :meth:`close`)."""
        for handle in [*self.components.values(), self.bus]:
            ray.kill(handle, no_restart=True)
        self.components.clear()


def placement(config: SystemConfig, role: str) -> dict[str, Any]:
    """Actor options that keep an actor of ``role`` on nodes of that role, spread across them
    (none without ``[placement] by_role``); ``ConfigurationError`` when no node offers it."""
    if not config.placement.by_role:
        return {}
    resource = role_resource(role)
    if ray.cluster_resources().get(resource, 0.0) < ROLE_SHARE:
        raise ConfigurationError(
            f"placement by role: no Ray node offers role {role!r}; start its nodes with "
            f"ray start --resources '{{\"{resource}\": {ROLE_CAPACITY:g}}}'"
        )
    # SPREAD: the components of a role go across its nodes (and, after a node is lost,
    # across the survivors), rather than packed onto the first node that fits.
    return {"resources": {resource: ROLE_SHARE}, "scheduling_strategy": "SPREAD"}


#: Ray records each call to an actor as task events (its state changes, sent to the GCS for
#: Ray's state API and timeline): on the ~25 calls a CCD to the bus and the components that was
#: CPU in every caller, every actor and the GCS, for views dmcs does not use (its own records,
#: events and the Performance Report say what each CCD did). Off, as Ray Serve has them.
TASK_EVENTS = False


def check_components(config: SystemConfig) -> None:
    """Every component's class loads and its settings validate (ConfigurationError naming the
    component and the fields), before anything starts: an actor that cannot be built would
    otherwise be found only after PostgreSQL, Ray and its peers came up."""
    for spec in config.components:
        model = load_component_class(spec.cls).settings_model
        if model is not None:
            validate_settings(model, spec.settings, spec.name)


def launch(config: SystemConfig) -> System:
    """Create the bus and the component actors on the connected Ray (see actors.runtime)."""
    places = {
        role: placement(config, role)
        for role in {"base", *(c.placement_role for c in config.components)}
    }
    bus = RemoteBus.options(
        name=bus_name(config.name),
        namespace=NAMESPACE,
        num_cpus=0,
        max_restarts=-1,
        get_if_exists=True,
        enable_task_events=TASK_EVENTS,
        **places["base"],
    ).remote()
    system = System(config=config, bus=bus)
    data_dir = str(config.data_dir.resolve())
    for spec in config.components:
        wire: dict[str, Any] = spec.model_dump(by_alias=True)
        system.components[spec.name] = RemoteComponent.options(
            name=actor_name(config.name, spec.name),
            namespace=NAMESPACE,
            num_cpus=spec.num_cpus,
            max_restarts=spec.max_restarts,
            max_task_retries=0,
            get_if_exists=True,
            enable_task_events=TASK_EVENTS,
            **places[spec.placement_role],
        ).remote(config.name, wire, config.heartbeat_interval, data_dir)
        where = f" on a {spec.placement_role} node" if config.placement.by_role else ""
        log.info("started component %s (%s)%s", spec.name, spec.cls, where)
    return system
