"""The controller base and state machine as plain Python (no Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from state.acks import Ack, AckCode
from state.command import Command
from state.controller import EVENT_HANDLER_FAILED, Controller
from state.errors import CommandRejected, ConfigurationError
from state.events import GENERIC_EVENTS, Event
from state.states import State, transition_path
from tests.standard import until


class Recorder(Controller):
    """A component with hooks that can be told to fail, and commands of every duration."""

    def __init__(self, **kwargs: Any) -> None:
        self.events: list[Event] = []
        super().__init__("Recorder", sink=self.events.append, authorized={"ocs"}, **kwargs)
        self.fail_in: str | None = None
        self.release = asyncio.Event()

    async def end_enable(self) -> None:
        if self.fail_in == "end_enable":
            raise RuntimeError("end hook broke")

    async def begin_enable(self) -> None:
        if self.fail_in == "begin_enable":
            raise CommandRejected("not ready")

    async def do_wait(self, *, seconds: float = 0.0) -> dict[str, Any]:
        self.in_progress(seconds, "waiting")
        await asyncio.wait_for(self.release.wait(), seconds or None)
        return {"waited": seconds}

    async def do_shout(self) -> None:
        self.publish("shout", {"loud": True})


async def run(component: Controller, name: str, identity: str = "ocs", **params: Any) -> list[Ack]:
    command = Command("Recorder", name, identity, 1, params, timeout=params.pop("_timeout", None))
    return [ack async for ack in component.handle(command)]


@pytest.fixture
async def recorder() -> Any:
    component = Recorder(heartbeat_interval=0.05, queue_size=2)
    await component.start()
    yield component
    await component.close()


def codes(acks: list[Ack]) -> list[AckCode]:
    return [a.code for a in acks]


def test_transition_paths() -> None:
    assert transition_path(State.STANDBY, State.ENABLED) == ["start", "enable"]
    assert transition_path(State.ENABLED, State.STANDBY) == ["disable", "standby"]
    assert transition_path(State.FAULT, State.ENABLED) == ["standby", "start", "enable"]
    assert transition_path(State.DISABLED, State.OFFLINE) == ["standby", "exitControl"]
    assert transition_path(State.ENABLED, State.ENABLED) == []
    with pytest.raises(ValueError, match="FAULT is entered only"):
        transition_path(State.ENABLED, State.FAULT)
    with pytest.raises(ValueError, match="OFFLINE cannot be commanded"):
        transition_path(State.OFFLINE, State.STANDBY)


async def test_failing_begin_hook_keeps_state(recorder: Recorder) -> None:
    await run(recorder, "start")
    recorder.fail_in = "begin_enable"
    acks = await run(recorder, "enable")
    assert codes(acks) == [AckCode.CMD_ACK, AckCode.CMD_FAILED]
    assert acks[-1].result == "not ready"
    assert recorder.summary_state == State.DISABLED


async def test_failing_end_hook_reverts_state(recorder: Recorder) -> None:
    await run(recorder, "start")
    recorder.fail_in = "end_enable"
    acks = await run(recorder, "enable")
    assert acks[-1].code == AckCode.CMD_FAILED
    assert "RuntimeError: end hook broke" in acks[-1].result
    assert recorder.summary_state == State.DISABLED
    states = [e.data["summaryState"] for e in recorder.events if e.topic == "summaryState"]
    assert states[-1] == "DISABLED"


async def test_in_progress_carries_remaining_time(recorder: Recorder) -> None:
    task = asyncio.create_task(run(recorder, "wait", seconds=5.0))
    await asyncio.sleep(0.05)
    recorder.release.set()
    acks = await task
    assert codes(acks) == [AckCode.CMD_ACK, AckCode.CMD_INPROGRESS, AckCode.CMD_COMPLETE]
    assert acks[1].timeout == 5.0
    assert acks[-1].data == {"waited": 5.0}


async def test_command_timeout(recorder: Recorder) -> None:
    acks = await run(recorder, "wait", seconds=10.0, _timeout=0.1)
    assert acks[-1].code == AckCode.CMD_TIMEOUT
    assert "0.1 s" in acks[-1].result


async def test_full_queue_rejects_explicitly(recorder: Recorder) -> None:
    def stream(seq: int) -> Any:
        return recorder.handle(Command("Recorder", "wait", "ocs", seq, {"seconds": 5.0}))

    first = stream(1)
    assert (await anext(first)).code == AckCode.CMD_ACK
    assert (await anext(first)).code == AckCode.CMD_INPROGRESS  # now running, queue empty
    waiting = [stream(2), stream(3)]
    for gen in waiting:
        assert (await anext(gen)).code == AckCode.CMD_ACK  # queued: the queue holds 2
    rejected = [ack async for ack in stream(4)]
    assert codes(rejected) == [AckCode.CMD_REJECTED]
    assert "queue is full" in rejected[0].result
    recorder.release.set()
    assert [ack.code async for ack in first] == [AckCode.CMD_COMPLETE]
    for gen in waiting:
        assert [ack.code async for ack in gen][-1] == AckCode.CMD_COMPLETE


async def test_queued_commands_are_aborted_on_close() -> None:
    component = Recorder(queue_size=4)
    await component.start()
    tasks = [asyncio.create_task(run(component, "wait", seconds=30.0)) for _ in range(3)]
    await asyncio.sleep(0.05)
    await component.close()
    results = [await t for t in tasks]
    assert all(r[-1].code == AckCode.CMD_ABORTED for r in results)


async def test_noperm_before_anything_runs(recorder: Recorder) -> None:
    acks = await run(recorder, "start", identity="mallory")
    assert codes(acks) == [AckCode.CMD_NOPERM]
    assert recorder.summary_state == State.STANDBY


async def test_safe_state_gates_component_events(recorder: Recorder) -> None:
    await run(recorder, "shout")
    assert not [e for e in recorder.events if e.topic == "shout"]
    await run(recorder, "start")
    await run(recorder, "enable")
    await run(recorder, "shout")
    assert [e.topic for e in recorder.events if e.topic == "shout"] == ["shout"]
    await recorder.fault(7, "broken")
    await run(recorder, "shout")
    assert len([e for e in recorder.events if e.topic == "shout"]) == 1
    assert {e.topic for e in recorder.events} - {"shout"} <= GENERIC_EVENTS


async def test_fault_publishes_error_code_and_only_standby_leaves(recorder: Recorder) -> None:
    await run(recorder, "start")
    await recorder.fault(42, "detector on fire")
    error = [e for e in recorder.events if e.topic == "errorCode"][-1]
    assert error.data == {"errorCode": 42, "errorReport": "detector on fire", "traceback": ""}
    assert (await run(recorder, "enable"))[-1].code == AckCode.CMD_FAILED
    assert (await run(recorder, "standby"))[-1].code == AckCode.CMD_COMPLETE
    assert recorder.snapshot()["errorCode"] == 0


async def test_heartbeat_sequence_is_contiguous(recorder: Recorder) -> None:
    def heartbeats() -> list[int]:
        return [e.seq for e in recorder.events if e.topic == "heartbeat"]

    await until(lambda: len(heartbeats()) >= 4)
    seqs = heartbeats()
    assert seqs == list(range(1, len(seqs) + 1))


class Listener(Recorder):
    """Handles events; a ``poison`` event makes its handler raise."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handled: list[str] = []

    async def on_event(self, event: Event) -> None:
        if event.topic == "poison":
            raise ValueError("cannot digest this")
        self.handled.append(event.topic)


async def test_a_failing_event_handler_faults_and_the_feed_goes_on() -> None:
    component = Listener(heartbeat_interval=0.05)
    await component.start()
    try:
        await run(component, "start")
        await run(component, "enable")
        await component.deliver(Event("Camera", "nextVisit", 1, 0.0, {"visit": 1}))
        await component.deliver(Event("Camera", "poison", 7, 0.0, {}))
        assert component.summary_state == State.FAULT
        error = [e for e in component.events if e.topic == "errorCode"][-1]
        assert error.data["errorCode"] == EVENT_HANDLER_FAILED
        assert "Camera/poison (seq 7)" in error.data["errorReport"]
        assert "cannot digest this" in error.data["traceback"]
        await component.deliver(Event("Camera", "endReadout", 2, 0.0, {}))
        assert component.handled == ["nextVisit", "endReadout"]
        assert (await run(component, "standby"))[-1].code == AckCode.CMD_COMPLETE
    finally:
        await component.close()


@pytest.mark.parametrize(
    ("topic", "data"),
    [
        ("nextVisit", {"visit": "abc"}),
        ("nextVisit", {"band": "r"}),
        ("nextVisit", {"visit": 1, "startMjd": 1e300}),
        ("startIntegration", {"imageName": []}),
        ("endReadout", {"imageName": "X", "images": [{"detector": 1}]}),
        ("weather", {"x": 10**30}),
        ("weather", {"x": "\ud800"}),
        ("seeing", {"fwhm": float("nan")}),
    ],
)
async def test_a_bad_event_from_elsewhere_is_refused_and_logged_never_fault(
    topic: str, data: dict[str, Any]
) -> None:
    component = Listener(heartbeat_interval=0.05)
    await component.start()
    try:
        await run(component, "start")
        await run(component, "enable")
        await component.deliver(Event("Camera", topic, 3, 0.0, data))
        assert component.summary_state == State.ENABLED
        assert component.handled == [] and component.checks.refused_events == 1
        said = [e.data["message"] for e in component.events if e.topic == "logMessage"]
        assert any(f"refused Camera/{topic} (seq 3)" in m for m in said)
        assert component.snapshot()["refusedEvents"] == 1
    finally:
        await component.close()


async def test_publish_refuses_what_breaks_its_contract(recorder: Recorder) -> None:
    await run(recorder, "start")
    await run(recorder, "enable")
    assert not recorder.publish("visitLatency", {"visit": 1, "latencySeconds": float("nan")})
    assert not recorder.publish("processingStatus", {"count": 2**70}, "telemetry")
    assert not recorder.publish("ccdStage", {"visit": 1, "detector": 0, "stage": "lunch"})
    assert recorder.publish("ccdStage", {"visit": 1, "detector": 0, "stage": "isrDone"})
    assert recorder.checks.refused_publish == 3
    sent = {e.topic for e in recorder.events}
    assert "visitLatency" not in sent and "ccdStage" in sent
    said = [e.data["message"] for e in recorder.events if e.topic == "logMessage"]
    assert any("not publishing visitLatency" in m for m in said)


class BrokenFault(Recorder):
    async def handle_summary_state(self) -> None:
        if self.summary_state == State.FAULT:
            raise RuntimeError("cannot stop the outputs")


async def test_fault_guards_each_step() -> None:
    component = BrokenFault(heartbeat_interval=0.05)
    await component.start()
    try:
        await run(component, "start")
        await component.fault(42, "detector overheated")
        assert component.summary_state == State.FAULT
        states = [e.data["summaryState"] for e in component.events if e.topic == "summaryState"]
        assert states[-1] == "FAULT"
        assert [e.data["errorCode"] for e in component.events if e.topic == "errorCode"] == [42]
        assert (await run(component, "standby"))[-1].code == AckCode.CMD_COMPLETE
    finally:
        await component.close()


async def test_assert_enabled_rejects_outside_enabled(recorder: Recorder) -> None:
    with pytest.raises(CommandRejected, match="STANDBY; it must be ENABLED to shout"):
        recorder.assert_enabled("shout")
    await run(recorder, "start")
    await run(recorder, "enable")
    recorder.assert_enabled("shout")


async def test_configurations_available_and_version_from_package_metadata() -> None:
    from importlib import metadata

    component = Recorder(heartbeat_interval=0.05, configurations=("auxtel", "comcam"))
    await component.start()
    try:
        (available,) = [e for e in component.events if e.topic == "configurationsAvailable"]
        assert available.data["overrides"] == "auxtel,comcam"
        assert available.data["version"] == metadata.version("dmcs") == component.version
        (versions,) = [e for e in component.events if e.topic == "softwareVersions"]
        assert versions.data["cscVersion"] == metadata.version("dmcs")
    finally:
        await component.close()


async def test_command_parameters_refuse_values_no_wire_can_carry(recorder: Recorder) -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        acks = await run(recorder, "wait", seconds=bad)
        assert acks[-1].code == AckCode.CMD_FAILED and "finite" in acks[-1].result


class TunedSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    rate: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    label: str = "plain"


class Tuned(Recorder):
    """A component whose settings model is a class attribute, validated by the base."""

    settings_model = TunedSettings

    def check_settings(self, config: TunedSettings) -> None:
        if config.label == "forbidden":
            raise ConfigurationError("label 'forbidden' is refused by Tuned itself")


@pytest.fixture
def overrides(tmp_path: Path) -> Path:
    """A folder of override files for the component ``Recorder`` (Tuned's name)."""
    folder = tmp_path / "Recorder"
    folder.mkdir()
    (folder / "fast.toml").write_text("rate = 5.0\n")
    (folder / "negative.toml").write_text("rate = -1.0\n")
    (folder / "typo.toml").write_text("rat = 2.0\n")
    (folder / "nan.toml").write_text("rate = nan\n")
    (folder / "forbidden.toml").write_text('label = "forbidden"\n')
    return tmp_path


def test_bad_settings_refuse_to_build_the_component() -> None:
    with pytest.raises(ConfigurationError, match="invalid settings for Recorder"):
        Tuned(settings={"rate": 0})
    with pytest.raises(ConfigurationError, match="Extra inputs"):
        Tuned(settings={"speed": 3})
    assert Tuned(settings={"rate": 2}).config == TunedSettings(rate=2.0)
    assert Recorder().config is None, "a component without a settings model has no config"


async def test_start_validates_the_override_with_the_settings_model(overrides: Path) -> None:
    component = Tuned(settings={"rate": 2.0}, heartbeat_interval=0.05, overrides_dir=overrides)
    await component.start()
    try:
        for override, message in (
            ("negative", "invalid settings for Recorder"),
            ("typo", "rat"),
            ("nan", "finite number"),
            ("forbidden", "refused by Tuned itself"),
            ("missing", "no configuration 'missing'; available: fast, forbidden, nan, negative"),
            ("../fast", "no configuration '../fast'"),
        ):
            acks = await run(component, "start", configurationOverride=override)
            assert codes(acks) == [AckCode.CMD_ACK, AckCode.CMD_FAILED], override
            assert message in acks[-1].result, (override, acks[-1].result)
            assert component.summary_state == State.STANDBY
            assert component.config == TunedSettings(rate=2.0), "settings unchanged"
        assert not [e for e in component.events if e.topic == "configurationApplied"]
        acks = await run(component, "start", configurationOverride="fast")
        assert codes(acks)[-1] == AckCode.CMD_COMPLETE
        assert component.config == TunedSettings(rate=5.0)
        (applied,) = [e for e in component.events if e.topic == "configurationApplied"]
        assert applied.data["configurations"] == "fast"
        await run(component, "standby")
        await run(component, "start")
        assert component.config == TunedSettings(rate=2.0), "no override: the settings alone"
    finally:
        await component.close()


async def test_a_component_without_settings_model_takes_no_override(recorder: Recorder) -> None:
    acks = await run(recorder, "start", configurationOverride="fast")
    assert acks[-1].code == AckCode.CMD_FAILED and "no configuration 'fast'" in acks[-1].result
    assert recorder.summary_state == State.STANDBY
