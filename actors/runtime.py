"""Starting and stopping Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging

import ray

NAMESPACE = "dmcs"
#: The custom Ray resource a node offers per core it lends to batch reprocessing.
BATCH_RESOURCE = "dmcs_batch"


def init_ray(address: str | None = None, num_cpus: int | None = None, batch_slots: int = 0) -> None:
    """Connect to the cluster at ``address``, or start a private local Ray when it is None.

    A local Ray offers ``batch_slots`` units of :data:`BATCH_RESOURCE`, so that
    ``dmcs reprocess --address`` can run batch work beside the live system on that many cores.
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return
    ray.init(
        num_cpus=num_cpus,
        resources={BATCH_RESOURCE: batch_slots} if batch_slots else None,
        namespace=NAMESPACE,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


def ray_address() -> str:
    """The address other drivers (``dmcs reprocess --address``) join this cluster by."""
    return str(ray.get_runtime_context().gcs_address)


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def bus_name(system: str) -> str:
    return f"{system}:bus"


def actor_name(system: str, component: str) -> str:
    return f"{system}:component:{component}"
