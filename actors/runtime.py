"""Starting and stopping Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
import socket
import time

import ray

from config.system import ROLES
from state.errors import StartupError

log = logging.getLogger("dmcs.runtime")

NAMESPACE = "dmcs"
#: The custom Ray resource a node offers per core it lends to batch reprocessing.
BATCH_RESOURCE = "dmcs_batch"
#: Seconds start-up waits for Ray unless told otherwise.
DEFAULT_START_TIMEOUT = 120.0
#: Ray's own wait for its GCS port; Ray reads it when it starts a node.
_GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
#: Units of a role resource a node offers (``dmcs_role_<role>``), and what one actor takes:
#: the resource marks a node's role, it does not ration anything.
ROLE_CAPACITY = 1000.0
ROLE_SHARE = 0.001


def role_resource(role: str) -> str:
    """The custom Ray resource marking nodes of ``role`` (``summit``, ``base``, ``batch``)."""
    return f"dmcs_role_{role}"


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    batch_slots: int = 0,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> None:
    """Connect to the cluster at ``address``, or start a private local Ray when it is None.

    A local Ray offers ``batch_slots`` units of :data:`BATCH_RESOURCE`, so that
    ``dmcs reprocess --address`` can run batch work beside the live system on that many cores,
    and every role resource, so that placement by role finds its one node fit for anything.
    Ray gives up on a node that has not registered after a fixed 30 s (a loaded machine can
    take longer), so a failed start is retried until ``timeout`` seconds have passed; then
    StartupError says what did not start.
    """
    if ray.is_initialized():
        return
    deadline = time.monotonic() + timeout
    if address:
        _wait_reachable(address, deadline, timeout)
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        try:
            _init_once(address, num_cpus, batch_slots, left)
            return
        except Exception as e:  # Ray raises a bare Exception when its node does not register
            ray.shutdown()
            left = deadline - time.monotonic()
            what = f"the Ray cluster at {address}" if address else "the embedded Ray"
            if left <= 1:
                raise StartupError(
                    f"{what} did not start within {timeout:.0f} s ({attempt} tries): {e}"
                ) from e
            log.warning("%s did not start (%s); retrying, %.0f s left", what, e, left)
            time.sleep(min(2.0, left / 2))


def wait_reachable(address: str, timeout: float) -> None:
    """Wait up to ``timeout`` s for the cluster at ``address`` to accept TCP; StartupError if
    it does not (a caller checks this before it changes anything, as ``dmcs replay`` does)."""
    _wait_reachable(address, time.monotonic() + timeout, timeout)


def _wait_reachable(address: str, deadline: float, timeout: float) -> None:
    """Wait until the cluster's GCS port accepts TCP (``ray.init`` itself may hang minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.5, min(5.0, left))):
                return
        except OSError as e:
            if left <= 0:
                raise StartupError(
                    f"the Ray cluster at {address} is not reachable within {timeout:.0f} s: {e}"
                ) from e
            log.warning("waiting for the Ray cluster at %s (%s); %.0f s left", address, e, left)
            time.sleep(min(1.0, max(0.0, left)))


def _init_once(address: str | None, num_cpus: int | None, batch_slots: int, left: float) -> None:
    if address:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return
    if _GCS_WAIT_ENV not in os.environ:
        os.environ[_GCS_WAIT_ENV] = str(max(30, int(left)))
    ray.init(
        address="local",
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
