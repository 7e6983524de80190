"""Data-plane payload contracts (state/contracts/data_plane.py) and the doors that check them.

Each hand-off the product makes passes its contract; each malformed one is refused with a
ContractError that names the field, at the component it enters, and changes nothing there:
the worker process goes on to the next CCD, AlertPublisher stays ENABLED and streams nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from base.isolated import IsolatedWorker
from base.prompt import ccd_work
from base.prompt.alert_publisher import AlertPublisher
from state.contracts.data_plane import (
    DATA_CONTRACTS,
    AlertHandoff,
    AssociateReply,
    CcdResultsWire,
    CcdVisit,
    CcdWorkResult,
    RawReceipt,
    RawTransfer,
)
from state.contracts.values import ContractError
from state.errors import InvalidInputError
from state.events import Event
from state.states import State
from tests.test_prompt_components import VISIT, alert_handoff, ccd_wire

SHA = "0123456789abcdef" * 4
RAW = {
    "imageName": "MC_O_20261121_000007",
    "visit": 2026112100007,
    "detector": 3,
    "camera": "LSSTComCamSim",
    "checksum": SHA,
    "byteSize": 4_000_000,
    "endReadoutTai": 1.8e9,
}
VISIT_INFO = {
    "visit": 7,
    "camera": "mini",
    "band": "r",
    "ra": 150.0,
    "dec": 2.0,
    "fieldId": 1,
    "startMjd": 60800.2,
    "dayObs": 20261121,
    "exposureTime": 30.0,
}
WORK_RESULT = {
    "ok": True,
    "reason": "",
    "stages": {"preloadReady": 1.8e9, "isrDone": 1.8e9 + 3},
    "summary": {"zeropoint": 31.2, "n_sources": 812, "seeing_arcsec": None},
    "ccd": {"visit": 7},
}

GOOD: list[tuple[type[Any], dict[str, Any]]] = [
    (RawTransfer, RAW),
    (RawReceipt, {"checksum": SHA, "duplicate": False}),
    (CcdVisit, VISIT_INFO),
    (CcdWorkResult, WORK_RESULT),
    (CcdWorkResult, {"ok": False, "reason": "no stars", "stages": {}, "summary": {}}),
    (CcdResultsWire, ccd_wire()),
    (AssociateReply, {"stored": True, "duplicate": False, "nDiaSources": 25, "nNew": 3}),
    (AssociateReply, {"stored": False, "duplicate": True}),
    (AlertHandoff, alert_handoff()),
]

BAD: list[tuple[type[Any], dict[str, Any], str]] = [
    (RawTransfer, {**RAW, "imageName": "../../etc/passwd"}, "'imageName'"),
    (RawTransfer, {**RAW, "imageName": ".hidden"}, "'imageName'"),
    (RawTransfer, {**RAW, "visit": "7"}, "'visit': Input should be a valid integer"),
    (RawTransfer, {**RAW, "visit": 2**64}, "'visit'"),
    (RawTransfer, {**RAW, "detector": -1}, "'detector'"),
    (RawTransfer, {**RAW, "checksum": "abc"}, "'checksum'"),
    (RawTransfer, {**RAW, "endReadoutTai": math.nan}, "'endReadoutTai'"),
    (RawTransfer, {"visit": 1}, "'imageName': Field required (and 2 more)"),
    (RawReceipt, {"checksum": SHA}, "'duplicate'"),
    (CcdVisit, {**VISIT_INFO, "visit": "abc"}, "'visit'"),
    (CcdVisit, {**VISIT_INFO, "band": "q"}, "'band'"),
    (CcdVisit, {**VISIT_INFO, "dec": 91.0}, "'dec'"),
    (CcdVisit, {**VISIT_INFO, "startMjd": 1e300}, "'startMjd'"),
    (CcdVisit, {**VISIT_INFO, "exposureTime": math.inf}, "'exposureTime'"),
    (CcdVisit, {k: v for k, v in VISIT_INFO.items() if k != "fieldId"}, "'fieldId'"),
    (CcdWorkResult, {**WORK_RESULT, "ccd": None}, "carries its results"),
    (CcdWorkResult, {**WORK_RESULT, "stages": {"teleported": 1.0}}, "'stages.teleported"),
    (CcdWorkResult, {**WORK_RESULT, "stages": {"isrDone": math.nan}}, "'stages.isrDone'"),
    (CcdWorkResult, {**WORK_RESULT, "ok": 1}, "'ok'"),
    (CcdResultsWire, {**ccd_wire(), "detector": 10**6}, "'detector'"),
    (CcdResultsWire, ccd_wire(footprint_ra=(1.0, 2.0)), "'footprint_ra'"),
    (CcdResultsWire, ccd_wire(cutouts=[("x", None, None)]), "'cutouts.0.0'"),
    (CcdResultsWire, ccd_wire(sources={"ra": np.zeros((2, 2))}), "2 dimensions"),
    (CcdResultsWire, ccd_wire(attempt=0), "'attempt'"),
    (AssociateReply, {"stored": "yes", "duplicate": False}, "'stored'"),
    (AssociateReply, {"stored": True, "duplicate": False, "nDiaSources": -1}, "'nDiaSources'"),
    (AlertHandoff, {**alert_handoff(), "dayObs": 2**70}, "'dayObs'"),
    (AlertHandoff, {**alert_handoff(), "sources": {"ra": [1.0]}}, "lack columns"),
    (AlertHandoff, {**alert_handoff(), "sources": "everything"}, "'sources'"),
    (AlertHandoff, {**alert_handoff(n=2), "cutouts": [(None, None, None)]}, "1 cutouts for 2"),
]


def test_every_data_plane_contract_has_a_good_and_a_bad_case() -> None:
    assert {c for c, _ in GOOD} == set(DATA_CONTRACTS)
    assert {c for c, _, _ in BAD} == set(DATA_CONTRACTS)


@pytest.mark.parametrize(("contract", "payload"), GOOD, ids=[c.__name__ for c, _ in GOOD])
def test_what_the_product_sends_fits(contract: Any, payload: dict[str, Any]) -> None:
    contract.parse(payload)


@pytest.mark.parametrize(
    ("contract", "payload", "message"), BAD, ids=[f"{c.__name__}:{m}" for c, _, m in BAD]
)
def test_a_malformed_payload_is_refused_naming_the_field(
    contract: Any, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(ContractError, match=f"^{contract.door}: .*") as info:
        contract.parse(payload)
    assert message in str(info.value)
    assert isinstance(info.value, InvalidInputError)


@pytest.mark.parametrize("contract", DATA_CONTRACTS, ids=lambda c: c.__name__)
def test_a_payload_that_is_not_a_map_is_refused(contract: Any) -> None:
    for wrong in (None, [1, 2], "visit=7", 7):
        with pytest.raises(ContractError, match="a payload must be a map"):
            contract.parse(wrong)


def test_numpy_integers_count_as_integers_but_booleans_do_not() -> None:
    assert RawTransfer.parse({**RAW, "visit": np.int64(7)}).visit == 7
    with pytest.raises(ContractError, match="'visit'"):
        RawTransfer.parse({**RAW, "visit": True})


async def test_the_worker_process_refuses_a_bad_visit_and_takes_the_next_ccd(
    tmp_path: Path,
) -> None:
    """The request is checked in the child, before any work; the child stays up."""
    worker = IsolatedWorker("contracts-test")
    try:
        for info, field in (
            ({**VISIT_INFO, "visit": "abc"}, "'visit'"),
            ({**VISIT_INFO, "startMjd": 1e300}, "'startMjd'"),
        ):
            with pytest.raises(ContractError, match=f"ccd work: field {field}"):
                await worker.run(
                    "base.prompt.ccd_work:process",
                    str(tmp_path),
                    info,
                    1,
                    str(tmp_path / "raw.fits"),
                    timeout=600,
                )
        pid = worker.pid
        with pytest.raises(ContractError, match="'band'"):
            await worker.run(
                "base.prompt.ccd_work:preload", str(tmp_path), {**VISIT_INFO, "band": 7}, 1,
                timeout=600,
            )  # fmt: skip
        assert worker.pid == pid and worker.restarts == 0, "the same child, never restarted"
    finally:
        worker.close()
    with pytest.raises(ContractError, match="'dayObs'"):
        ccd_work.process(str(tmp_path), {**VISIT_INFO, "dayObs": None}, 1, "raw.fits")


async def test_publisher_refuses_a_malformed_handoff_and_stays_enabled(
    tmp_path: Path, pg_dsn: str
) -> None:
    events: list[Event] = []
    settings = {
        "dsn": pg_dsn,
        "apdb_schema": "apdb_contracts",
        "archive_schema": "alerts_contracts",
        "records_schema": "pr_contracts",
    }
    publisher = AlertPublisher(
        "AlertPublisher", sink=events.append, settings=settings, data_dir=tmp_path
    )
    await publisher.start()
    try:
        await publisher.do_start()
        await publisher.do_enable()
        good = alert_handoff(n=4)
        for bad, message in (
            ({**good, "visit": "7"}, "'visit'"),
            ({**good, "dayObs": 2**64}, "'dayObs'"),
            ({**good, "stages": {"endReadout": math.inf}}, "'stages.endReadout'"),
            ({**good, "sources": {"ra": np.zeros(4), "dec": np.zeros(5)}}, "differ in length"),
            ({k: v for k, v in good.items() if k != "detector"}, "'detector'"),
        ):
            with pytest.raises(ContractError, match=message):
                await publisher.rpc_publish(bad)
        assert publisher.summary_state == State.ENABLED
        assert publisher.spool.head == 0, "nothing of a refused hand-off streamed"
        assert not [e for e in events if e.topic == "alertsPublished"]
        reply = await publisher.rpc_publish(good)
        assert reply["published"] == 4 and not reply["duplicate"]
        [published] = [e for e in events if e.topic == "alertsPublished"]
        assert (published.data["visit"], published.data["nAlerts"]) == (VISIT, 4)
    finally:
        await publisher.close()
