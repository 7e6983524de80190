"""OS scheduling priority for batch work: it takes idle cycles and yields busy cores."""

from __future__ import annotations

import os

#: The niceness a batch worker process sets itself to when it starts (see
#: :func:`setup_batch_worker`); set by the batch driver in its Ray job's ``env_vars``.
NICENESS_ENV = "DMCS_BATCH_NICENESS"


def lower_priority(niceness: int) -> None:
    """Raise this thread's niceness to at least ``niceness`` (it can never be lowered back).

    On Linux niceness belongs to a thread; threads started afterwards inherit it. Batch work
    at niceness 19 still takes every idle cycle, but the kernel gives a contended core to
    prompt processing (niceness 0) about 98 % of the time.
    """
    if niceness > 0 and os.getpriority(os.PRIO_PROCESS, 0) < niceness:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)


def setup_batch_worker() -> None:
    """Ray's ``worker_process_setup_hook`` of a batch job: lower the worker's priority
    before it imports the pipeline, so its start-up is batch work too."""
    lower_priority(int(os.environ.get(NICENESS_ENV, "0")))
