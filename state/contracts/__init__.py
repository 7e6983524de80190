"""Typed contracts: one pydantic model per event topic, telemetry topic and camera event, and
one per data-plane payload between components (:mod:`state.contracts.data_plane`).

Input is checked once at the door (the gateway, and the client before it sends); components'
own events are checked by ``Controller.publish``; a component refuses (and logs) a bus event
that does not fit instead of letting its handler fail. docs/events.md is tested against these.
"""

from __future__ import annotations

from typing import Any

from .base import Contract
from .camera import CAMERA_CONTRACTS
from .events import COMPONENT_CONTRACTS, GENERIC_CONTRACTS
from .telemetry import OCS_CONTRACTS, REPROCESS_CONTRACTS
from .values import ContractError, check_value, nesting_depth_exceeds

#: Every topic with a contract, by topic name (topics are unique across components).
CONTRACTS: dict[str, type[Contract]] = {
    c.topic: c
    for c in (
        *GENERIC_CONTRACTS,
        *CAMERA_CONTRACTS,
        *OCS_CONTRACTS,
        *REPROCESS_CONTRACTS,
        *COMPONENT_CONTRACTS,
    )
}


def check_payload(topic: str, data: Any) -> None:
    """Raise ContractError unless ``data`` fits ``topic``'s contract (any safe map without one)."""
    contract = CONTRACTS.get(topic)
    if contract is not None:
        contract.check(data)
        return
    if not isinstance(data, dict):
        raise ContractError(f"{topic}: a payload must be a map, got {type(data).__name__}")
    check_value(data, topic)


__all__ = [
    "CONTRACTS",
    "Contract",
    "ContractError",
    "check_payload",
    "check_value",
    "nesting_depth_exceeds",
]
