"""Routing of a CCD's results to its Association partition (``[association] partitions``).

The tile assignment is ``algorithms.partition`` (the one batch reprocessing cuts the sky
with); here it becomes the name of the actor that associates the CCD. A CCD goes whole to one
partition, so its store, its outbox row and its alerts stay keyed by (visit, detector) and it
is complete when that one partition has stored it; a retry goes to the same partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from algorithms.partition import REGION_ORDER, partition_of
from config.system import partition_name


def association_peer(
    name: str, partitions: int, ccd: Mapping[str, Any], order: int = REGION_ORDER
) -> str:
    """The Association actor (``name`` being partition 0's) that associates this CCD's
    results (``CcdResultsWire``). Results without a usable footprint go to partition 0, whose
    contract check refuses them with the reason (one place judges a payload)."""
    if partitions == 1:
        return name
    try:
        k = partition_of(ccd["footprint_ra"], ccd["footprint_dec"], partitions, order)
    except (KeyError, ValueError, TypeError):
        k = 0
    return partition_name(name, k)
