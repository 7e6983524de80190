"""The typed contracts (state/contracts) against docs/events.md and docs/protocol.md, and the
bounds every payload is held to."""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from commands.dashboard.batch import MODES, PHASES, STATUSES
from commands.gateway import MAX_IN_FLIGHT, MAX_PENDING_CONTROL, MAX_SUBSCRIPTIONS
from commands.protocol import _CLIENT_FIELDS, ErrorCode, Op
from state.contracts import CONTRACTS, Contract, ContractError, check_payload, check_value
from state.contracts.data_plane import DATA_CONTRACTS
from state.contracts.telemetry import ReprocessMode, ReprocessPhase, ReprocessStatus
from state.contracts.values import MAX_DEPTH
from state.events import CAMERA_EVENTS, GENERIC_EVENTS, OCS_TELEMETRY, REPROCESS_TELEMETRY

DOCS = Path(__file__).resolve().parent.parent / "docs"
IDENTIFIER = re.compile(r"[a-z][A-Za-z0-9]*")


def documented_rows() -> dict[str, str]:
    """Topic → payload cell of every table row in docs/events.md that names a topic."""
    rows: dict[str, str] = {}
    for line in (DOCS / "events.md").read_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        for cell in cells[:-1]:
            names = re.findall(r"`([^`]+)`", cell)
            if names and names[0] in CONTRACTS:
                rows[names[0]] = cells[-1]
                break
    return rows


def inner_names(contract: type[Contract]) -> set[str]:
    """The values of the contract's closed sets and the fields of its nested contracts."""
    names: set[str] = set()
    for field in contract.model_fields.values():
        stack = [field.annotation]
        while stack:
            hint = stack.pop()
            if typing.get_origin(hint) is typing.Literal:
                names.update(str(v) for v in typing.get_args(hint))
            elif isinstance(hint, type) and issubclass(hint, Contract):
                names.update(hint.model_fields)
            else:
                stack.extend(typing.get_args(hint))
    return names


def test_every_input_and_generic_topic_has_a_contract() -> None:
    for topic in GENERIC_EVENTS | CAMERA_EVENTS | OCS_TELEMETRY | REPROCESS_TELEMETRY:
        assert topic in CONTRACTS, topic


def test_events_md_documents_every_contract_and_no_field_it_lacks() -> None:
    rows = documented_rows()
    assert set(rows) == set(CONTRACTS), set(CONTRACTS) ^ set(rows)
    for topic, cell in rows.items():
        contract = CONTRACTS[topic]
        fields = set(contract.model_fields)
        named = {t for t in re.findall(r"`([^`]+)`", cell) if IDENTIFIER.fullmatch(t)}
        assert fields <= named, f"{topic}: fields not in docs/events.md: {fields - named}"
        stray = named - fields - inner_names(contract)
        assert not stray, f"{topic}: docs/events.md names fields the contract lacks: {stray}"


def test_protocol_md_lists_every_error_code_op_and_limit() -> None:
    text = (DOCS / "protocol.md").read_text()
    for code in ErrorCode:
        assert f"`{code.value}`" in text, code
    for op in Op:
        assert f'"op":"{op.value}"' in text, op
    for op, fields in _CLIENT_FIELDS.items():
        example = next(line for line in text.splitlines() if f'"op":"{op.value}"' in line)
        for name in fields:
            assert f'"{name}":' in example, (op, name)
    for limit in (MAX_IN_FLIGHT, MAX_SUBSCRIPTIONS, MAX_DEPTH):
        assert str(limit) in text, limit
    assert f"{MAX_PENDING_CONTROL:,}" in text


def test_reprocess_enums_match_the_dashboard() -> None:
    assert typing.get_args(ReprocessMode) == MODES
    assert typing.get_args(ReprocessPhase) == PHASES
    assert typing.get_args(ReprocessStatus) == STATUSES


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (2**63, "64-bit"),
        (-(2**63) - 1, "64-bit"),
        (math.nan, "finite"),
        (-math.inf, "finite"),
        ("\udc80", "UTF-8"),
        ({"\ud800": 1}, "UTF-8"),
        ({1: 2}, "keys"),
        ("x" * 70_000, "longer"),
        (object(), "not a wire value"),
    ],
)
def test_check_value_refuses_what_no_wire_can_carry(value: Any, reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        check_value({"a": [value]})


def test_check_value_refuses_deep_nesting_without_recursing() -> None:
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ContractError, match="nested deeper"):
        check_value(deep)
    shallow: Any = 0
    for _ in range(MAX_DEPTH - 1):
        shallow = [shallow]
    check_value({"x": shallow})


def test_contracts_are_strict() -> None:
    with pytest.raises(ContractError, match="'visit'"):
        check_payload("nextVisit", {"visit": "42"})
    with pytest.raises(ContractError, match="'tracking'"):
        check_payload("pointing", {"tracking": 1})
    with pytest.raises(ContractError, match="'band'"):
        check_payload("filter", {"band": "q"})
    with pytest.raises(ContractError, match="a map"):
        check_payload("someOtherTopic", [1])
    check_payload("pointing", {"ra": 10, "dec": -30.5, "tracking": True, "extra": [1, "a"]})
    check_payload("someOtherTopic", {"anything": {"safe": 1.5}})


@pytest.mark.parametrize("camera", ["mini", "lsstcam"])
def test_every_event_of_a_simulated_night_fits_its_contract(camera: str) -> None:
    from config.cameras import load_camera
    from summit.night import night_events
    from summit.schedule import generate_schedule

    cam = load_camera(camera)
    events = list(night_events(cam, generate_schedule(cam, 4, seed=2), telemetry_s=5.0))
    assert {e.name for e in events} >= CAMERA_EVENTS | {"pointing", "predictedSchedule"}
    for event in events:
        check_payload(event.name, event.payload)


def test_protocol_md_documents_every_data_plane_contract_and_its_fields() -> None:
    rows: dict[str, str] = {}
    for line in (DOCS / "protocol.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0]) if line.startswith("|") else []
        if names:
            rows[names[0]] = cells[-1]
    for contract in DATA_CONTRACTS:
        assert contract.__name__ in rows, contract.__name__
        named = set(re.findall(r"`([^`]+)`", rows[contract.__name__]))
        fields = set(contract.model_fields)
        assert fields <= named, f"{contract.__name__}: not in docs/protocol.md: {fields - named}"
