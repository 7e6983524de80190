"""A multi-node Ray cluster on this machine, for tests and demos (``dmcs replay --nodes N``).

Each node is its own raylet (Ray's ``cluster_utils.Cluster``, the machinery of ``ray start``
run in-process): the head offers the ``summit`` role, every other node ``base``. Every base
node offers the logical CPUs of the whole base side, so losing one
(:meth:`LocalCluster.kill_base_node`) leaves the survivors room for the actors that restart
there. Small settings (a 150 MiB object store per node, no dashboard) so that three nodes fit
a 2-core machine; logical CPUs are Ray's accounting, not cores.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray

from actors.runtime import ROLE_CAPACITY, role_resource
from config.system import ComponentConfig
from state.errors import ConfigurationError, StartupError

if TYPE_CHECKING:
    from ray._private.node import Node
    from ray.cluster_utils import Cluster

log = logging.getLogger("dmcs.cluster")

#: Object store per node: Ray's minimum is 75 MiB; a night's bulk data moves through the
#: repository, so the store holds only call arguments and results.
OBJECT_STORE_BYTES = 150 * 1024 * 1024
#: How fast the head declares a killed node dead (Ray's default takes ~30 s).
HEALTH_CHECK = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


@dataclass(frozen=True)
class NodeLoss:
    """A node removed from the cluster: which, its role, and when (Unix seconds)."""

    node_id: str
    role: str
    at: float


class LocalCluster:
    """A head (``summit``) and ``nodes - 1`` ``base`` raylets; :meth:`shutdown` ends them all."""

    def __init__(
        self, nodes: int, *, cpus: dict[str, float] | None = None, timeout: float = 120.0
    ) -> None:
        if nodes < 2:
            raise ConfigurationError(f"a local cluster needs at least 2 nodes, not {nodes}")
        from ray.cluster_utils import Cluster

        self.nodes = nodes
        self._cpus = cpus or {}
        self._cluster: Cluster | None = None
        self._base: list[Node] = []
        began = time.monotonic()
        try:
            self._cluster = Cluster(
                initialize_head=True,
                head_node_args=self._node_args("summit") | {"_system_config": HEALTH_CHECK},
                shutdown_at_exit=True,
            )
            for _ in range(nodes - 1):
                self._base.append(self._cluster.add_node(**self._node_args("base")))
            self._cluster.wait_for_nodes(timeout=max(30.0, timeout - (time.monotonic() - began)))
        except Exception as e:  # Ray raises bare Exceptions when a node does not register
            self.shutdown()
            raise StartupError(f"the local {nodes}-node Ray cluster did not start: {e}") from e

    def _node_args(self, role: str) -> dict[str, object]:
        return {
            "num_cpus": max(1, math.ceil(self._cpus.get(role, 1))),
            "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False,
            "resources": {role_resource(role): ROLE_CAPACITY},
        }

    @property
    def address(self) -> str:
        if self._cluster is None:
            raise StartupError("the local cluster has been shut down")
        return str(self._cluster.address)

    @property
    def head_id(self) -> str:
        assert self._cluster is not None and self._cluster.head_node is not None
        return str(self._cluster.head_node.node_id)

    @property
    def base_ids(self) -> list[str]:
        return [str(n.node_id) for n in self._base]

    @property
    def roles(self) -> dict[str, str]:
        """Every live node's role, by node id."""
        return {self.head_id: "summit"} | dict.fromkeys(self.base_ids, "base")

    def victim(self) -> Node:
        """The base node :meth:`kill_base_node` kills: the last one this driver is not on."""
        if self._cluster is None:
            raise StartupError("the local cluster has been shut down")
        mine = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        victims = [n for n in self._base if str(n.node_id) != mine]
        if len(self._base) < 2 or not victims:
            raise ConfigurationError(
                "killing a base node needs another base node to survive it (--nodes 3 or more)"
            )
        return victims[-1]

    def kill_base_node(self, node: Node | None = None) -> NodeLoss:
        """Kill every process of one base node (:meth:`victim` unless given), at once."""
        node = node or self.victim()
        assert self._cluster is not None
        at = time.time()
        self._cluster.remove_node(node, allow_graceful=False)
        self._base.remove(node)
        log.warning("killed base node %s", node.node_id)
        return NodeLoss(node_id=str(node.node_id), role="base", at=at)

    def shutdown(self) -> None:
        """Kill every node; safe to call twice, and after a failed start."""
        cluster, self._cluster = self._cluster, None
        if cluster is None:
            return
        try:
            cluster.shutdown()
        except Exception as e:  # noqa: BLE001 (a node already gone; the rest must still stop)
            log.warning("shutting the local cluster down: %s", e)
        self._base.clear()


def cpus_by_role(components: Iterable[ComponentConfig]) -> dict[str, float]:
    """The logical CPUs the components of each role ask for, all together."""
    need: dict[str, float] = {}
    for spec in components:
        need[spec.placement_role] = need.get(spec.placement_role, 0.0) + spec.num_cpus
    return need
