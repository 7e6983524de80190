"""CcdProcessor, Association and AlertPublisher on real Ray with a real PostgreSQL.

The standard state-machine and bad-command tests for each, Association's FAULT on bad
input, and the hand-off Association → AlertPublisher: one alert per DIASource, published
once, however often the same CCD is offered.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest

from base.apdb.simulate import dia_sources
from commands.client import Client
from commands.server import RunningSystem
from state.errors import InvalidInputError, NotReadyError
from state.states import State
from tests.conftest import TOKENS, component_spec
from tests.standard import StandardComponentTests, wait_for_event

ASSOCIATION = "base.prompt.association:Association"
PUBLISHER = "base.prompt.alert_publisher:AlertPublisher"
PROCESSOR = "base.prompt.ccd_processor:CcdProcessor"
VISIT, DETECTOR, MJD = 2026112100007, 3, 60800.2


def ccd_wire(visit: int = VISIT, detector: int = DETECTOR, n: int = 25, **changes: Any) -> dict:
    where = np.random.default_rng(detector)  # the same sky positions in every visit
    rng = np.random.default_rng([visit % 1000, detector])
    ra0, dec0 = 150.0, 2.0
    ra = ra0 + where.uniform(-0.05, 0.05, n)
    dec = dec0 + where.uniform(-0.05, 0.05, n)
    sources = dia_sources(rng, ra, dec, visit, detector, MJD)
    wire = {
        "visit": visit,
        "detector": detector,
        "band": "r",
        "day_obs": 20261121,
        "midpoint_mjd": MJD,
        "footprint_ra": (ra0 - 0.06, ra0 + 0.06, ra0 + 0.06, ra0 - 0.06),
        "footprint_dec": (dec0 - 0.06, dec0 - 0.06, dec0 + 0.06, dec0 + 0.06),
        "sources": sources,
        "cutouts": [],
        "stages": {"endReadout": 1.0e9},
    }
    wire.update(changes)
    return wire


def nan_wire() -> dict:
    wire = ccd_wire(detector=9)
    wire["sources"] = {**wire["sources"], "ra": np.full(25, math.nan)}
    return wire


class TestAssociation(StandardComponentTests):
    component_class = ASSOCIATION
    name = "Association"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str) -> RunningSystem:
        type(self).settings = {"dsn": pg_dsn, "apdb_schema": "apdb_assoc_std"}
        return await system_factory(self.spec())

    async def cause_fault(self, running: RunningSystem, client: Client) -> None:
        """DIASources with NaN coordinates (sent once the test listens): rejected, FAULT."""

        async def send() -> None:
            await asyncio.sleep(1.0)
            with pytest.raises(InvalidInputError, match="non-finite ra"):
                await running.system.handle(self.name).rpc.remote("associate", nan_wire())

        self._sent = asyncio.get_running_loop().create_task(send())

    def repair_fault(self, running: RunningSystem) -> None:
        assert self._sent.done() and self._sent.exception() is None

    async def test_refuses_work_unless_enabled(self, running: RunningSystem, ocs: Client) -> None:
        with pytest.raises(NotReadyError, match="not ENABLED"):
            await running.system.handle(self.name).rpc.remote("associate", ccd_wire())


class TestAlertPublisher(StandardComponentTests):
    component_class = PUBLISHER
    name = "AlertPublisher"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str) -> RunningSystem:
        type(self).settings = {"dsn": pg_dsn, "archive_schema": "alerts_pub_std"}
        return await system_factory(self.spec())


class TestCcdProcessor(StandardComponentTests):
    component_class = PROCESSOR
    name = "CcdProcessor0"

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any, pg_dsn: str, mini_night: Any) -> RunningSystem:
        type(self).settings = {
            "dsn": pg_dsn,
            "night_dir": str(mini_night),
            "registry_schema": "reg_proc_std",
            "records_schema": "prompt_proc_std",
        }
        return await system_factory(self.spec())


@pytest.fixture(scope="module")
async def association_and_publisher(system_factory: Any, pg_dsn: str) -> RunningSystem:
    return await system_factory(
        component_spec(
            "Association", ASSOCIATION, settings={"dsn": pg_dsn, "apdb_schema": "apdb_handoff"}
        ),
        component_spec(
            "AlertPublisher",
            PUBLISHER,
            settings={"dsn": pg_dsn, "archive_schema": "alerts_handoff", "records_schema": "pr_h"},
        ),
    )


async def test_a_ccd_becomes_alerts_once(association_and_publisher: RunningSystem) -> None:
    running = association_and_publisher
    association = running.system.handle("Association")
    async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
        published = ocs.subscribe(["AlertPublisher"], ["alertsPublished"], snapshot=False)
        await ocs.set_system_state(State.ENABLED)
        reply = await association.rpc.remote("associate", ccd_wire())
        assert reply["stored"] and reply["nDiaSources"] == 25 and reply["nNew"] > 0
        event = await wait_for_event(published, lambda e: e.data["visit"] == VISIT)
        assert event.data["nAlerts"] == 25 and event.data["latencySeconds"] > 0
        again = await association.rpc.remote("associate", ccd_wire())
        assert again == {"stored": False, "duplicate": True}, "a retried CCD stores nothing"
        await asyncio.sleep(1.5)
        status = await association.snapshot.remote()
        assert status["summaryState"] == "ENABLED"
        with pytest.raises(TimeoutError):
            await wait_for_event(published, lambda e: e.data["visit"] == VISIT, timeout=2.0)
        await published.aclose()

        second = await association.rpc.remote("associate", ccd_wire(visit=VISIT + 1))
        assert second["stored"] and second["nMatched"] > 0, "the next visit matches the objects"
        await ocs.set_system_state(State.STANDBY)
