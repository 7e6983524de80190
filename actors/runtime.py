"""Starting and stopping Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging

import ray

from config.system import ROLES

NAMESPACE = "dmcs"
#: The custom Ray resource a node offers per core it lends to batch reprocessing.
BATCH_RESOURCE = "dmcs_batch"
#: Units of a role resource a node offers (``dmcs_role_<role>``), and what one actor takes:
#: the resource marks a node's role, it does not ration anything.
ROLE_CAPACITY = 1000.0
ROLE_SHARE = 0.001


def role_resource(role: str) -> str:
    """The custom Ray resource marking nodes of ``role`` (``summit``, ``base``, ``batch``)."""
    return f"dmcs_role_{role}"


def init_ray(address: str | None = None, num_cpus: int | None = None, batch_slots: int = 0) -> None:
    """Connect to the cluster at ``address``, or start a private local Ray when it is None.

    A local Ray offers ``batch_slots`` units of :data:`BATCH_RESOURCE`, so that
    ``dmcs reprocess --address`` can run batch work beside the live system on that many cores,
    and every role resource, so that placement by role finds its one node fit for anything.
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return
    ray.init(
        num_cpus=num_cpus,
        resources=local_resources(batch_slots),
        namespace=NAMESPACE,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


def local_resources(batch_slots: int = 0) -> dict[str, float]:
    """The custom resources of a single-node Ray: every role, and the batch slots."""
    resources = {role_resource(r): ROLE_CAPACITY for r in ROLES}
    if batch_slots:
        resources[BATCH_RESOURCE] = float(batch_slots)
    return resources


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
