"""A component's failed background task is started again on ``standby`` → ``start``: the task
that put it in FAULT is back once the component is recovered (issue 16 item 5)."""

from __future__ import annotations

import asyncio

from state.controller import BACKGROUND_TASK_FAILED, Controller, SupervisedGroup
from state.events import Event
from state.states import State
from tests.standard import until


class Flaky(Controller):
    """A loop that fails on its first run; a one-off task given as a coroutine."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__("Flaky", sink=events.append)
        self.runs = 0
        self.ticks = 0
        self.one_offs = 0

    async def run_background(self, tg: SupervisedGroup) -> None:
        tg.create_task(self._loop, name="loop")
        tg.create_task(self._one_off(), name="one_off")

    async def _loop(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("first run fails")
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def _one_off(self) -> None:
        self.one_offs += 1
        raise RuntimeError("not restartable")


async def test_a_failed_background_task_is_restarted_by_standby_then_start() -> None:
    events: list[Event] = []
    component = Flaky(events)
    await component.start()
    try:
        await until(lambda: component.summary_state == State.FAULT)
        codes = [e.data["errorCode"] for e in events if e.topic == "errorCode"]
        assert codes == [BACKGROUND_TASK_FAILED]
        await asyncio.sleep(0.1)
        assert component.ticks == 0, "the failed loop is not running"
        await component.do_standby()
        await component.do_start()
        await until(lambda: component.ticks > 3)
        assert component.runs == 2 and component.summary_state == State.DISABLED
        assert component.one_offs == 1, "a task given as a coroutine is not started again"
        logged = [e.data["message"] for e in events if e.topic == "logMessage"]
        assert "background task(s) restarted: loop" in logged
        await component.do_standby()
        await component.do_start()
        assert component.runs == 2, "a running task is not started twice"
    finally:
        await component.close()
