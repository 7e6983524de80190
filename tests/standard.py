"""Reusable tests every component gets: standard state transitions and bad commands.

Subclass :class:`StandardComponentTests`, set ``component_class`` (``module:Class``) and,
where the component has its own way to fail, override :meth:`cause_fault`. The tests run
against a real Ray, a real gateway on loopback and the real client.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import asyncpg
import pytest

from commands.client import Client
from commands.server import RunningSystem
from state.acks import AckCode
from state.errors import CommandFailedError, CommandNoPermissionError
from state.events import GENERIC_EVENTS, Event
from state.states import State
from tests.conftest import TOKENS, component_spec

EVENT_WAIT = 10.0


async def wait_for_event(
    events: AsyncIterator[Event], predicate: Callable[[Event], bool], timeout: float = EVENT_WAIT
) -> Event:
    """The first event from ``events`` that satisfies ``predicate``."""
    async with asyncio.timeout(timeout):
        async for event in events:
            if predicate(event):
                return event
    raise AssertionError("event stream ended")


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy, and return that."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.05)


async def until_row(dsn: str, query: str, *args: Any, timeout: float = 60.0) -> None:
    """Until ``query`` returns something truthy, polled every 10 ms on one connection (a
    table not created yet counts as no row): for moments too short for ``until``'s 50 ms and
    a connection each, or for events that arrive late by design."""
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(asyncpg.UndefinedTableError):
                    if await conn.fetchval(query, *args):
                        return
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


class StandardComponentTests:
    component_class: ClassVar[str]
    name: ClassVar[str]
    settings: ClassVar[dict[str, Any]] = {}

    def spec(self, name: str | None = None) -> dict[str, Any]:
        return component_spec(name or self.name, self.component_class, settings=self.settings)

    @pytest.fixture(scope="class")
    async def running(self, system_factory: Any) -> RunningSystem:
        return await system_factory(self.spec())

    @pytest.fixture
    async def ocs(self, running: RunningSystem) -> AsyncIterator[Client]:
        async with Client(running.ws_url, token=TOKENS["ocs"]) as client:
            await client.set_state(self.name, State.STANDBY)
            yield client

    async def cause_fault(self, running: RunningSystem, client: Client) -> None:
        """Override: drive the ENABLED component into FAULT through its real failure path."""
        pytest.skip(f"{self.name} has no fault scenario")

    # ----------------------------------------------------------------- states
    async def test_starts_in_standby_with_heartbeat(self, ocs: Client) -> None:
        events = await ocs.open_subscription([self.name], ["heartbeat"], snapshot=False)
        beat = await wait_for_event(events, lambda e: True)
        assert beat.data["state"] == "STANDBY"
        assert beat.data["heartbeatInterval"] > 0
        again = await wait_for_event(events, lambda e: True)
        assert again.seq == beat.seq + 1
        await events.aclose()

    async def test_standard_transitions(self, ocs: Client) -> None:
        events = await ocs.open_subscription([self.name], ["summaryState"], snapshot=True)
        now = await wait_for_event(events, lambda e: True)  # the snapshot: subscribed from here
        assert now.data["summaryState"] == "STANDBY"
        walk = [
            ("start", State.DISABLED),
            ("enable", State.ENABLED),
            ("disable", State.DISABLED),
            ("standby", State.STANDBY),
        ]
        for command, expected in walk:
            acks: list[Any] = []
            final = await ocs.command(self.name, command, timeout=10, on_ack=acks.append)
            assert [a.code for a in acks] == [AckCode.CMD_ACK, AckCode.CMD_COMPLETE]
            assert final.code == AckCode.CMD_COMPLETE
            event = await wait_for_event(events, lambda e: True)
            assert event.data["summaryState"] == expected.name, (command, event)
            assert event.data["commandedState"] == expected.name
            assert await ocs.get_state(self.name) == expected
        await events.aclose()

    async def test_set_state_walks_several_steps(self, ocs: Client) -> None:
        acks = await ocs.set_state(self.name, State.ENABLED)
        assert [a.command for a in acks] == ["start", "enable"]
        assert await ocs.get_state(self.name) == State.ENABLED
        acks = await ocs.set_state(self.name, "standby")
        assert [a.command for a in acks] == ["disable", "standby"]

    @pytest.mark.parametrize(
        ("command", "state"),
        [
            ("enable", State.STANDBY),
            ("disable", State.STANDBY),
            ("standby", State.STANDBY),
            ("start", State.DISABLED),
            ("exitControl", State.DISABLED),
            ("enable", State.ENABLED),
        ],
    )
    async def test_command_in_wrong_state_fails(
        self, ocs: Client, command: str, state: State
    ) -> None:
        await ocs.set_state(self.name, state)
        with pytest.raises(CommandFailedError, match=f"not allowed in {state.name}") as info:
            await ocs.command(self.name, command, timeout=10)
        assert info.value.ack.code == AckCode.CMD_FAILED
        assert await ocs.get_state(self.name) == state

    # ------------------------------------------------------------ bad commands
    @pytest.mark.parametrize(
        ("command", "params", "reason"),
        [
            ("fly", {}, "has no command 'fly'"),
            ("start", {"configuration": "x"}, "unknown parameter 'configuration'"),
            ("start", {"configurationOverride": 3}, "must be str, got int"),
            ("setLogLevel", {}, "missing parameter 'level'"),
            ("setLogLevel", {"level": "loud"}, "must be int"),
            ("setLogLevel", {"level": True}, "must be int"),
            ("setLogLevel", {"level": 999}, "level must be between"),
            ("start", {"configurationOverride": "no_such_config"}, "no configuration"),
            ("start", {"configurationOverride": "../../etc/passwd"}, "no configuration"),
        ],
    )
    async def test_bad_command_fails_with_reason(
        self, ocs: Client, command: str, params: dict[str, Any], reason: str
    ) -> None:
        with pytest.raises(CommandFailedError, match=reason.replace("(", r"\(")):
            await ocs.command(self.name, command, timeout=10, **params)
        assert await ocs.get_state(self.name) == State.STANDBY

    async def test_unknown_component_fails(self, ocs: Client) -> None:
        with pytest.raises(CommandFailedError, match="unknown component 'Nobody'"):
            await ocs.command("Nobody", "start", timeout=10)

    @pytest.mark.parametrize("token", [TOKENS["scientist"], None])
    async def test_unauthorized_identity_gets_noperm(
        self, running: RunningSystem, ocs: Client, token: str | None
    ) -> None:
        async with Client(running.ws_url, token=token) as outsider:
            with pytest.raises(CommandNoPermissionError) as info:
                await outsider.command(self.name, "start", timeout=10)
            assert info.value.ack.code == AckCode.CMD_NOPERM
            status = {s["name"]: s for s in await outsider.status()}
            assert status[self.name]["name"] == self.name
        assert await ocs.get_state(self.name) == State.STANDBY

    async def test_set_log_level_publishes_log_level(self, ocs: Client) -> None:
        events = await ocs.open_subscription([self.name], ["logLevel"], snapshot=False)
        await ocs.command(self.name, "setLogLevel", level=10, timeout=10)
        event = await wait_for_event(events, lambda e: True)
        assert event.data["level"] == 10
        await ocs.command(self.name, "setLogLevel", level=20, timeout=10)
        await events.aclose()

    async def test_safe_state_publishes_only_generic_events(
        self, running: RunningSystem, ocs: Client
    ) -> None:
        events = await ocs.open_subscription([self.name], snapshot=False)
        await ocs.command(self.name, "start", timeout=10)
        await self.stimulate(running, ocs)
        topics: set[str] = set()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3.0):
                async for event in events:
                    topics.add(event.topic)
        assert "heartbeat" in topics
        assert topics <= GENERIC_EVENTS, topics - GENERIC_EVENTS
        await events.aclose()

    async def stimulate(self, running: RunningSystem, client: Client) -> None:
        """Override: send what would make the component produce its own outputs."""

    # -------------------------------------------------------- fault, restart
    async def test_fault_and_recovery_through_standby(
        self, running: RunningSystem, ocs: Client
    ) -> None:
        events = await ocs.open_subscription(
            [self.name], ["errorCode", "summaryState"], snapshot=False
        )
        await ocs.set_state(self.name, State.ENABLED)
        await self.cause_fault(running, ocs)
        error = await wait_for_event(events, lambda e: e.topic == "errorCode")
        assert error.data["errorCode"] != 0 and error.data["errorReport"]
        await wait_for_event(events, lambda e: e.data.get("summaryState") == "FAULT")
        for command in ("enable", "start", "disable"):
            with pytest.raises(CommandFailedError, match="not allowed in FAULT"):
                await ocs.command(self.name, command, timeout=10)
        status = {s["name"]: s for s in await ocs.status()}
        assert status[self.name]["errorCode"] == error.data["errorCode"]
        await ocs.command(self.name, "standby", timeout=10)
        assert await ocs.get_state(self.name) == State.STANDBY
        await events.aclose()
        repaired = self.repair_fault(running)
        if inspect.isawaitable(repaired):
            await repaired
        await ocs.set_state(self.name, State.ENABLED)
        await ocs.set_state(self.name, State.STANDBY)

    def repair_fault(self, running: RunningSystem) -> Awaitable[None] | None:
        """Override (plain or async): undo what :meth:`cause_fault` broke."""

    async def test_restarts_in_standby_after_crash(
        self, running: RunningSystem, ocs: Client
    ) -> None:
        events = await ocs.open_subscription(
            [self.name], ["summaryState", "logMessage"], snapshot=False
        )
        await ocs.set_state(self.name, State.ENABLED)
        handle = running.system.handle(self.name)
        os.kill(await handle.pid.remote(), signal.SIGKILL)
        came_back = await wait_for_event(
            events, lambda e: e.topic == "summaryState" and e.data["restartCount"] >= 1, 60.0
        )
        assert came_back.data["summaryState"] == "STANDBY"
        said = await wait_for_event(events, lambda e: e.topic == "logMessage")
        assert "restarted after a crash" in said.data["message"]
        assert await ocs.get_state(self.name) == State.STANDBY
        await events.aclose()

    async def test_exit_control_goes_offline(self, system_factory: Any) -> None:
        running = await system_factory(self.spec(f"{self.name}Exit"))
        async with Client(running.ws_url, token=TOKENS["ocs"]) as ocs:
            name = f"{self.name}Exit"
            await ocs.command(name, "exitControl", timeout=10)
            assert await ocs.get_state(name) == State.OFFLINE
            with pytest.raises(CommandFailedError, match="not allowed in OFFLINE"):
                await ocs.command(name, "start", timeout=10)
