"""Run by tests/test_placement.py in its own process: a real two-node Ray cluster on this machine
(actors.cluster.LocalCluster: a head offering the ``summit`` role, a second raylet offering
``base``, as ``dmcs replay --nodes 2`` starts it), a system launched
with ``[placement] by_role``, and the node each actor landed on, printed as JSON.

``python -m tests.placement_cluster DATA_DIR``. First a system that also wants a ``batch``
component, which no node offers: its launch must fail before any actor starts (``error``);
so must a batch executor (``batch_error``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import ray
import ray._private.state as ray_state

from actors.cluster import LocalCluster
from actors.launcher import launch
from actors.reprocess import RayExecutor
from actors.runtime import NAMESPACE, actor_name, bus_name
from config.system import SystemConfig
from state.errors import ConfigurationError

COMPONENTS = [
    {"name": "HeaderService", "class": "summit.header_service:HeaderService"},
    {"name": "Pipeline", "class": "tests.night_emitter:NightEmitter"},
    {"name": "Summitish", "class": "tests.night_emitter:NightEmitter", "role": "summit"},
]


def _config(data_dir: Path, components: list[dict[str, str]]) -> SystemConfig:
    placed = {"by_role": True}
    return SystemConfig.model_validate(
        {"name": "placed", "data_dir": str(data_dir), "placement": placed, "components": components}
    )


_EMBEDDED = (
    "from actors.runtime import init_ray, ray_address, shutdown_ray\n"
    "init_ray(num_cpus=1, timeout=40)\n"
    "print(ray_address())\n"
    "shutdown_ray()\n"
)


def _embedded_address_beside_cluster(cluster_address: str) -> str:
    """Where an embedded Ray lands while this cluster runs on the same machine and names itself
    as the current one (``RAY_ADDRESS``, or ``ray start``'s file): a private Ray, not the cluster,
    which a plain ``ray.init()`` would join."""
    env = {**os.environ, "RAY_ADDRESS": cluster_address}
    run = subprocess.run(
        [sys.executable, "-c", _EMBEDDED],
        check=True, capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    return run.stdout.strip().splitlines()[-1]


def main(data_dir: Path) -> dict[str, object]:
    cluster = LocalCluster(2)
    out: dict[str, object] = {}
    try:
        ray.init(address=cluster.address, namespace=NAMESPACE)
        head_id = cluster.head_id
        batch = {"name": "Batch", "class": "tests.night_emitter:NightEmitter", "role": "batch"}
        try:
            launch(_config(data_dir, [*COMPONENTS, batch]))
        except ConfigurationError as e:
            out["error"] = str(e)
        out["actors_after_error"] = sum(
            a["Name"].startswith("placed:") for a in ray_state.actors().values()
        )
        try:
            RayExecutor(workers=1)
        except ConfigurationError as e:
            out["batch_error"] = str(e)
        system = launch(_config(data_dir, COMPONENTS))
        asyncio.run(system.wait_ready(120))
        names = {bus_name("placed"): "bus"}
        names |= {actor_name("placed", c["name"]): c["name"] for c in COMPONENTS}
        nodes = {
            names[a["Name"]]: "head" if a["Address"]["NodeID"] == head_id else "second"
            for a in ray_state.actors().values()
            if a["Name"] in names and a["State"] == "ALIVE"
        }
        system.stop()
        out["cluster_address"] = cluster.address
        out["embedded_address"] = _embedded_address_beside_cluster(cluster.address)
        return {**out, "nodes": nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
