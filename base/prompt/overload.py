"""Falling behind gracefully: which pending CCDs a processor takes, and which it defers.

``fifo``: oldest visit first, every CCD however late (today's order).

``newest_first``: the pool is *behind* while the backlog exceeds the latency budget: the age of
the oldest pending CCD (seconds since it was listed at its ``imageIngested``), or the projected
time to finish every pending CCD (that age plus the pending count times the recent seconds per
CCD, shared by the pool). While behind, the CCDs older than the budget are deferred (their
alerts could not be timely anyway; they go to the daytime catch-up, ``dmcs reprocess
--catch-up``, with their reason recorded) and the rest are taken newest visit first, so the
newest visits stay within the budget while the old ones would only have made them late too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from base.prompt.work_queue import WorkItem
from config.system import OverloadConfig

#: ``failureType`` and outcome status of a CCD deferred to the daytime catch-up.
DEFERRED = "deferred"
OVERLOAD = "overload"


@dataclass(frozen=True)
class Plan:
    #: The pending CCDs to take, in the order to take them.
    order: list[WorkItem]
    #: The pending CCDs to defer, each with its reason.
    defer: list[tuple[WorkItem, str]] = field(default_factory=list)
    #: Whether the backlog exceeds the budget (newest first, deferring).
    behind: bool = False
    #: Seconds of backlog: the oldest pending CCD's age, or the projection when larger.
    backlog_s: float = 0.0


def plan(
    pending: list[tuple[WorkItem, float]],
    now: float,
    policy: OverloadConfig,
    *,
    ccd_seconds: float = 0.0,
    pool_size: int = 1,
) -> Plan:
    """The order of ``pending`` ((item, listed at) oldest visit first) under ``policy``."""
    items = [item for item, _ in pending]
    if not pending:
        return Plan(items)
    oldest = max(now - listed for _, listed in pending)
    projected = oldest + len(pending) * max(ccd_seconds, 0.0) / max(pool_size, 1)
    backlog = max(oldest, projected)
    budget = policy.latency_budget
    if policy.policy == "fifo" or backlog <= budget:
        return Plan(items, backlog_s=backlog)
    keep, defer = [], []
    for item, listed in pending:
        age = now - listed
        if age > budget:
            reason = (
                f"{age:.0f} s behind, over the {budget:g} s latency budget"
                f" (overload policy {policy.policy}); left to the daytime catch-up"
            )
            defer.append((item, reason))
        else:
            keep.append(item)
    keep.sort(key=lambda i: (-i.visit, i.detector))
    return Plan(keep, defer, True, backlog)
