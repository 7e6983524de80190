"""Reprocessing on Ray: each CCD a task, batch work fenced off by a resource and a priority.

Sharing the cluster with a live night takes two limits:

* **How many cores** (a Ray resource): a node offers as many units of the custom resource
  ``dmcs_batch`` as cores it lends to batch work (``batch_slots`` in the system
  configuration; the embedded Ray started here offers ``workers``). A batch task takes one
  unit and no logical CPU, so it never competes with the prompt actors' CPU reservations
  and batch work never runs on more than those cores, whatever is queued. On a cluster that
  offers no ``dmcs_batch`` a task asks for one CPU and ``--workers`` alone bounds them.
* **Who wins a shared core** (OS priority): the worker runs at ``niceness`` (19 by
  default), so when prompt processing and batch work share a core, prompt work gets it.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from actors.runtime import BATCH_RESOURCE, NAMESPACE, ROLE_CAPACITY, ROLE_SHARE, role_resource
from base.reprocess.work import CcdUnit, process_ccd
from state.errors import ConfigurationError, RetriableError
from state.priority import NICENESS_ENV, lower_priority

log = logging.getLogger(__name__)


def start_ray(address: str | None, workers: int, niceness: int = 19) -> bool:
    """Join ``address`` or start an embedded Ray lending ``workers`` cores to batch work.

    This driver's job runs its worker processes at ``niceness`` from their start (Ray's
    worker setup hook), so even their imports yield to prompt work. Workers belong to one
    job, so the live system's processes are never affected. Returns True when this call
    started (and so should stop) Ray.
    """
    if ray.is_initialized():
        return False
    job = {
        "namespace": NAMESPACE,
        "logging_level": logging.WARNING,
        "runtime_env": {
            "env_vars": {NICENESS_ENV: str(niceness)},
            "worker_process_setup_hook": "state.priority.setup_batch_worker",
        },
    }
    if address:
        ray.init(address=address, **job)
    else:
        ray.init(
            num_cpus=workers,
            resources={BATCH_RESOURCE: workers},
            include_dashboard=False,
            **job,
        )
    return True


def batch_placement() -> dict[str, float]:
    """On a cluster whose nodes have roles (``dmcs_role_*``, placement by role), the resource
    that keeps batch tasks on ``batch`` nodes; nothing on a cluster without roles (the
    embedded single node offers every role, so there it changes nothing)."""
    resources = ray.cluster_resources()
    if not any(name.startswith(role_resource("")) for name in resources):
        return {}
    batch_role = role_resource("batch")
    if resources.get(batch_role, 0.0) < ROLE_SHARE:
        raise ConfigurationError(
            f"the cluster places by node role but no node offers role 'batch'; start batch "
            f"nodes with ray start --resources '{{\"{batch_role}\": {ROLE_CAPACITY:g}}}'"
        )
    return {batch_role: ROLE_SHARE}


@ray.remote(num_cpus=1, max_retries=0)
def _process(unit: CcdUnit, release: int, niceness: int) -> dict[str, Any]:
    lower_priority(niceness)
    return process_ccd(unit, release)


class RayExecutor:
    """Runs CCDs as Ray tasks, at most ``workers`` at a time (the runner's bound)."""

    def __init__(self, workers: int, niceness: int = 19) -> None:
        self.workers = workers
        self.niceness = niceness
        batch = ray.cluster_resources().get(BATCH_RESOURCE, 0)
        self.options: dict[str, Any] = (
            {"num_cpus": 0, "resources": {BATCH_RESOURCE: 1}} if batch else {}
        )
        if not batch:
            log.warning(
                "the cluster offers no %s resource; only --workers bounds batch work",
                BATCH_RESOURCE,
            )
        if role := batch_placement():
            self.options["resources"] = {**self.options.get("resources", {}), **role}

    async def run(self, unit: CcdUnit, release: int) -> dict[str, Any]:
        ref = _process.options(**self.options).remote(unit, release, self.niceness)
        try:
            return await ref
        except RayTaskError as e:
            return {"ok": False, "reason": f"internal_error: {e.cause!r}"}
        except RayError as e:
            raise RetriableError(f"worker lost on {unit.key}: {e}") from e

    async def close(self) -> None:
        return None
