"""Reprocessing on Ray: each CCD a task of ``num_cpus=1``, batch work fenced off by a resource.

Sharing the cluster with a live night: every batch task also asks for one unit of the custom
resource ``dmcs_batch``. A node offers as many ``dmcs_batch`` units as cores it lends to batch
work (the embedded Ray started here offers ``workers``); prompt processors never ask for it,
so batch work can never take more than those cores, whatever is queued. On a cluster that
offers no ``dmcs_batch`` the tasks ask only for CPUs and ``--workers`` alone bounds them.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from actors.runtime import NAMESPACE
from base.reprocess.work import CcdUnit, process_ccd
from state.errors import RetriableError

BATCH_RESOURCE = "dmcs_batch"
log = logging.getLogger(__name__)


def start_ray(address: str | None, workers: int) -> bool:
    """Join ``address`` or start an embedded Ray lending ``workers`` cores to batch work.

    Returns True when this call started (and so should stop) Ray.
    """
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=workers,
            resources={BATCH_RESOURCE: workers},
            namespace=NAMESPACE,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    return True


@ray.remote(num_cpus=1, max_retries=0)
def _process(night_dir: str, unit: CcdUnit, release: int) -> dict[str, Any]:
    return process_ccd(night_dir, unit, release)


class RayExecutor:
    """Runs CCDs as Ray tasks, at most ``workers`` at a time (the runner's bound)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        batch = ray.cluster_resources().get(BATCH_RESOURCE, 0)
        self.resources = {BATCH_RESOURCE: 1} if batch else {}
        if not batch:
            log.warning(
                "the cluster offers no %s resource; only --workers bounds batch work",
                BATCH_RESOURCE,
            )

    async def run(self, night_dir: str, unit: CcdUnit, release: int) -> dict[str, Any]:
        ref = _process.options(resources=self.resources).remote(night_dir, unit, release)
        try:
            return await ref
        except RayTaskError as e:
            return {"ok": False, "reason": f"internal_error: {e.cause!r}"}
        except RayError as e:
            raise RetriableError(f"worker lost on {unit.key}: {e}") from e

    async def close(self) -> None:
        return None
