"""``dmcs replay --kill-node-at VISIT``: removing a base node mid-night, and what it cost.

When the chosen visit starts integrating, every process of one base node is killed (its
raylet, and with it the actors it hosted). Ray restarts those actors on the surviving base
nodes (``max_restarts``); they come back in STANDBY and the replay's watcher, acting for the
OCS, re-enables them as after any restart. The loss is published on the bus (topic
``nodeLost``, which the dashboard raises as an alarm) and lands in the summary and the
Performance Report with the CCDs it cost: those under way when the node went.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import ray
import ray._private.state as ray_state
from ray.actor import ActorHandle

from actors.cluster import LocalCluster
from actors.runtime import NAMESPACE
from commands.night_driver import DriveProgress
from commands.replay.watch import NightProgress
from state.clock import tai_now
from state.events import CLUSTER_SOURCE, Event

log = logging.getLogger("dmcs.replay")

#: The component name node-loss events are published under.
CLUSTER_COMPONENT = CLUSTER_SOURCE
NODE_LOST_TOPIC = "nodeLost"


@dataclass
class NodeLossRecord:
    """One lost node, as the summary and the Performance Report show it."""

    node_id: str
    visit: int
    at: float
    actors: list[str] = field(default_factory=list)
    #: CCDs of the visits read out before the one at which the node went, not yet ended then:
    #: the work under way when the loss hit (those on the lost node redone on a survivor).
    #: The visit whose integration had just begun has nothing read out yet, so is not counted.
    interrupted: list[tuple[int, int]] = field(default_factory=list)
    #: Of those, the ones that ended failed (with the reason), not processed.
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeId": self.node_id,
            "visit": self.visit,
            "at": self.at,
            "actors": self.actors,
            "ccdsInterrupted": len(self.interrupted),
            "interrupted": [list(k) for k in self.interrupted],
            "ccdsFailed": len(self.failed),
            "failed": self.failed,
        }


class NodeKiller:
    """Kills one base node of ``cluster`` when the ``at_visit``-th visit (1-based) starts."""

    def __init__(self, cluster: LocalCluster, at_visit: int, visit_ids: list[int]) -> None:
        self.cluster = cluster
        self.at_visit = at_visit
        self.visit_ids = visit_ids
        self.visit_id = visit_ids[at_visit - 1]
        self.bus: ActorHandle | None = None
        self.progress: NightProgress | None = None
        self.losses: list[NodeLossRecord] = []
        self._task: asyncio.Task[None] | None = None

    def on_drive(self, p: DriveProgress) -> None:
        """Hooked to the night driver: fire once, as the chosen visit starts integrating."""
        started = p.topic == "startIntegration" and p.visits_sent >= self.at_visit - 1
        if self._task is None and started:
            self._task = asyncio.get_running_loop().create_task(self._kill())

    async def _kill(self) -> None:
        in_flight = []
        if self.progress is not None:
            done = self.progress.finished
            read_out = set(self.visit_ids[: self.at_visit - 1])
            in_flight = sorted(
                k for k in self.progress.expected if k[0] in read_out and k not in done
            )
        node = self.cluster.victim()
        actors = await asyncio.to_thread(_actors_on, str(node.node_id))
        loss = await asyncio.to_thread(self.cluster.kill_base_node, node)
        record = NodeLossRecord(
            node_id=loss.node_id,
            visit=self.visit_id,
            at=loss.at,
            actors=actors,
            interrupted=in_flight,
        )
        self.losses.append(record)
        log.warning(
            "killed base node %s at visit %d: %d CCDs in flight, actors %s",
            loss.node_id, self.visit_id, len(in_flight), ", ".join(record.actors) or "none",
        )  # fmt: skip
        if self.bus is not None:
            event = Event(
                component=CLUSTER_COMPONENT,
                topic=NODE_LOST_TOPIC,
                seq=len(self.losses),
                tai=tai_now(),
                data={
                    "nodeId": loss.node_id,
                    "role": loss.role,
                    "visit": self.visit_id,
                    "actors": record.actors,
                    "ccdsInterrupted": len(in_flight),
                },
            )
            await _publish(self.bus, event)

    async def settle(self, progress: NightProgress) -> list[dict[str, Any]]:
        """After the night: wait for the kill (if it fired); what each loss cost, as JSON."""
        if self._task is not None:
            await self._task
        for record in self.losses:
            record.failed = {
                f"{v}/{d}": progress.failed[(v, d)]
                for v, d in record.interrupted
                if (v, d) in progress.failed
            }
        return [r.to_json() for r in self.losses]


def placement_of(system: str) -> dict[str, str]:
    """Where each live actor of ``system`` runs: component name -> node id."""
    prefix = f"{system}:"
    return {
        str(a["Name"]).rsplit(":", 1)[-1]: str(a["Address"]["NodeID"])
        for a in ray_state.actors().values()
        if str(a.get("Name", "")).startswith(prefix) and a.get("State") == "ALIVE"
    }


def _actors_on(node_id: str) -> list[str]:
    """Names of the dmcs actors that were alive on ``node_id`` (read from the GCS)."""
    names = []
    for actor in ray_state.actors().values():
        if actor.get("RayNamespace", NAMESPACE) != NAMESPACE or not actor.get("Name"):
            continue
        if actor["Address"]["NodeID"] == node_id:
            names.append(str(actor["Name"]).rsplit(":", 1)[-1])
    return sorted(set(names))


async def _publish(bus: ActorHandle, event: Event) -> None:
    """Publish on the bus; a bus that is itself restarting (it may have lived on the node)
    is retried for a while, then the loss is only logged."""
    for _ in range(30):
        try:
            await bus.publish.remote(event.to_wire())
            return
        except ray.exceptions.RayActorError as e:
            log.warning("the bus cannot take the node-loss event yet (%s); retrying", e)
            await asyncio.sleep(1.0)
    log.error("the node-loss event could not be published")
