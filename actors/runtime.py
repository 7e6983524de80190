"""Starting and stopping Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging

import ray

NAMESPACE = "dmcs"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at ``address``, or start a private local Ray when it is None."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return
    ray.init(
        num_cpus=num_cpus,
        namespace=NAMESPACE,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def bus_name(system: str) -> str:
    return f"{system}:bus"


def actor_name(system: str, component: str) -> str:
    return f"{system}:component:{component}"
