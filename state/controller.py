"""The controller base every dmcs component derives from (after ts_salobj's ``BaseCsc``).

A component is a plain Python class: it runs in any asyncio loop and publishes through a
sink callable, so it is testable without Ray. It

* accepts commands into a bounded queue and runs them one at a time;
* maps every command outcome to an ack in one place (:meth:`_final_ack`);
* walks the summary-state machine of :mod:`state.states` with ``begin_<cmd>``/``end_<cmd>``
  hooks, reverting the state when either fails;
* publishes a heartbeat at a fixed interval and the generic events;
* keeps the safe state: only the generic events leave a component that is not ENABLED.

Commands are ``async def do_<name>(self, *, param: type = default) -> dict | None`` methods;
their keyword-only parameters are the command's schema. Beside it: the settings model and its
overrides (:mod:`state.settings`), the supervised background tasks (:mod:`state.supervised`),
the contract checks of events in and out (:mod:`state.event_checks`) and the outcome → ack
mapping (:mod:`state.command_outcome`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import traceback as tb
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from state.acks import Ack, AckCode
from state.clock import tai_now
from state.command import Command, ParamSpec, param_specs, validate_params
from state.command_outcome import CommandAborted, CommandTimeout, final_ack, unexpected
from state.errors import (
    CommandRejected,
    DmcsError,
    NotPermittedError,
    QueueFullError,
)
from state.event_checks import EventChecks
from state.events import GENERIC_EVENTS, Event, EventKind
from state.fanout import TopicFilter
from state.peers import NoPeers, Peers
from state.settings import Configurable, override_names
from state.states import TRANSITIONS, State
from state.supervised import SupervisedGroup

EventSink = Callable[[Event], None]


@dataclass(slots=True)
class _Job:
    command: Command
    method: Callable[..., Any]
    acks: asyncio.Queue[Ack] = field(default_factory=asyncio.Queue)
    #: The event loop's time at which the command times out (set when it begins).
    deadline: float = math.inf


#: errorCode of a FAULT caused by a component's own background task raising.
BACKGROUND_TASK_FAILED = 1
#: errorCode of a component whose :meth:`Controller.on_event` raised.
EVENT_HANDLER_FAILED = 2


def package_version() -> str:
    """dmcs's version from the installed package metadata (one place: pyproject.toml)."""
    try:
        return metadata.version("dmcs")
    except metadata.PackageNotFoundError:
        return "0+unknown"


_current_job: contextvars.ContextVar[_Job | None] = contextvars.ContextVar(
    "_current_job", default=None
)


class Controller(Configurable):
    """Safe-state command controller; subclass it and add ``do_<command>`` methods."""

    version: ClassVar[str] = package_version()
    #: Generic events are always allowed; a subclass lists its own topics for documentation.
    event_topics: ClassVar[tuple[str, ...]] = ()
    #: Bus sources and topics delivered to :meth:`on_event` (no sources: nothing delivered).
    listen_components: ClassVar[tuple[str, ...]] = ()
    listen_topics: ClassVar[tuple[str, ...]] = ()
    #: Own topics that only watchers read (the gateway, dashboard, replay, reports), never a
    #: component: like heartbeats and telemetry, they may wait (0.5 s at most) for the next
    #: send to the bus, in order with everything else the component publishes.
    held_topics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        name: str,
        *,
        sink: EventSink,
        authorized: frozenset[str] | set[str] | tuple[str, ...] = (),
        heartbeat_interval: float = 1.0,
        queue_size: int = 16,
        command_timeout: float = 60.0,
        restart_count: int = 0,
        settings: Mapping[str, Any] | None = None,
        data_dir: Path | None = None,
        peers: Peers | None = None,
        configurations: Sequence[str] = (),
        overrides_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.overrides_dir = overrides_dir
        #: The configuration overrides ``start`` accepts (``configurationsAvailable``).
        self.configurations = tuple(configurations) or override_names(overrides_dir, name)
        self.authorized = frozenset(authorized)
        self.heartbeat_interval = heartbeat_interval
        self.command_timeout = command_timeout
        self.restart_count = restart_count
        self.settings: Mapping[str, Any] = dict(settings or {})
        self.config = self.load_settings()
        self.data_dir = data_dir or Path("var") / name
        self.peers: Peers = peers or NoPeers()
        self.log = logging.getLogger(f"dmcs.{name}")
        self._sink = sink
        self._state = State.STANDBY
        self._commanded_state = State.STANDBY
        self._seq: dict[str, int] = {}
        self._suppressed = 0
        self.checks = EventChecks()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_size)
        self._runner: asyncio.Task[None] | None = None
        self._group: SupervisedGroup | None = None
        self._error_code = 0
        self._error_report = ""
        self._specs: dict[str, tuple[ParamSpec, ...]] = {
            attr[3:]: param_specs(getattr(self, attr))
            for attr in dir(type(self))
            if attr.startswith("do_") and callable(getattr(self, attr))
        }

    # ----------------------------------------------------------------- lifecycle
    @property
    def summary_state(self) -> State:
        return self._state

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(sorted(self._specs))

    async def start(self) -> None:
        """Come up in STANDBY, announce it, and start the owned background tasks."""
        if self._runner is not None:
            return
        self.publish("softwareVersions", {"cscVersion": self.version, "subsystemVersions": ""})
        self.publish(
            "configurationsAvailable",
            {
                "overrides": ",".join(self.configurations),
                "version": self.version,
                "url": "",
                "schemaVersion": "",
            },
        )
        self.publish("logLevel", {"level": self.log.getEffectiveLevel(), "subsystem": ""})
        self._publish_summary_state()
        if self.restart_count:
            self.log_message(
                logging.WARNING,
                f"{self.name} restarted after a crash (restart {self.restart_count}); "
                "it came back in STANDBY",
            )
        self._runner = asyncio.create_task(self._run(), name=f"{self.name}-controller")

    async def close(self) -> None:
        """Cancel every background task and abort queued commands."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        while not self._queue.empty():
            job = self._queue.get_nowait()
            job.acks.put_nowait(self._final_ack(job.command, CommandAborted("component closed")))

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._heartbeat_loop())
            tg.create_task(self._command_loop())
            self._group = SupervisedGroup(tg, self._background_failed)
            await self.run_background(self._group)

    async def run_background(self, tg: SupervisedGroup) -> None:
        """Hook: start a component's own long-lived tasks in the controller's TaskGroup.

        A task that raises puts the component in FAULT (with the traceback) instead of taking
        the heartbeat and the command loop down with it, so the failure is seen and ``standby``
        still answers.
        """

    async def _background_failed(self, name: str, error: BaseException, trace: str) -> None:
        self.log.error("background task %s failed: %r\n%s", name, error, trace)
        await self.fault(BACKGROUND_TASK_FAILED, f"background task {name} failed: {error!r}", trace)

    def listen_filter(self) -> TopicFilter:
        """What the event feed asks the bus for; read before each poll, so that a subclass's
        filter may follow its configuration (a changed one applies from the next poll on)."""
        return TopicFilter.of(self.listen_components, self.listen_topics)

    async def on_event(self, event: Event) -> None:
        """Hook: an event from :attr:`listen_components` arrived (in any state)."""

    async def deliver(self, event: Event) -> None:
        """Hand ``event`` to :meth:`on_event`, as the event feed does.

        An event that does not fit its topic's contract is refused and logged: another
        component's bad output never sends this one to FAULT. A handler that raises on a valid
        event is this component's own failure: FAULT (the event and the traceback in the
        report), and the feed goes on, so the failure is seen and ``standby`` recovers it.
        """
        refusal = self.checks.incoming(event)
        if refusal is not None:
            self.log_message(logging.WARNING, refusal)
            return
        try:
            await self.on_event(event)
        except Exception as e:  # noqa: BLE001 -- any failure of a component's handler
            trace = tb.format_exc()
            self.log.error("handling %s/%s failed: %r\n%s", event.component, event.topic, e, trace)
            report = f"handling {event.component}/{event.topic} (seq {event.seq}) failed: {e!r}"
            await self.fault(EVENT_HANDLER_FAILED, report, trace)

    async def _heartbeat_loop(self) -> None:
        while True:
            self.publish(
                "heartbeat",
                {
                    "state": self._state.name,
                    "stateCode": int(self._state),
                    "heartbeatInterval": self.heartbeat_interval,
                },
            )
            await asyncio.sleep(self.heartbeat_interval)

    # ------------------------------------------------------------------ publishing
    def publish(self, topic: str, data: dict[str, Any], kind: EventKind = "event") -> bool:
        """Send an event or telemetry; outside ENABLED only generic events leave (safe state).

        A payload that does not fit the topic's contract is not sent: it is logged and counted
        (``refusedPublish`` in :meth:`snapshot`), so no consumer ever sees it.
        """
        if topic not in GENERIC_EVENTS and self._state != State.ENABLED:
            self._suppressed += 1
            return False
        refusal = self.checks.outgoing(topic, data)
        if refusal is not None:
            self.log.error("%s: %s", self.name, refusal)
            if topic != "logMessage":
                self.log_message(logging.ERROR, refusal)
            return False
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        self._sink(Event(self.name, topic, seq, tai_now(), data, kind))
        return True

    def log_message(self, level: int, message: str, **context: Any) -> None:
        """Log locally and, at or above the component's log level, publish ``logMessage``."""
        self.log.log(level, message, extra={"context": context} if context else None)
        if level >= self.log.getEffectiveLevel():
            self.publish(
                "logMessage",
                {
                    "level": level,
                    "message": message,
                    "traceback": context.pop("traceback", ""),
                    "context": {k: str(v) for k, v in context.items()},
                },
            )

    def _publish_summary_state(self) -> None:
        self.publish(
            "summaryState",
            {
                "summaryState": self._state.name,
                "stateCode": int(self._state),
                "commandedState": self._commanded_state.name,
                "restartCount": self.restart_count,
            },
        )

    # ------------------------------------------------------------------- commands
    async def handle(self, command: Command) -> AsyncIterator[Ack]:
        """Yield the acks of ``command``: a final one at once, or CMD_ACK then the rest."""
        try:
            job = self._admit(command)
        except DmcsError as e:
            yield self._final_ack(command, e)
            return
        yield self._ack(command, AckCode.CMD_ACK)
        while True:
            ack = await job.acks.get()
            yield ack
            if ack.code.is_final:
                return

    def _admit(self, command: Command) -> _Job:
        specs = self._specs.get(command.name)
        if specs is None:
            raise CommandRejected(
                f"{self.name} has no command {command.name!r}; "
                f"its commands are: {', '.join(self.commands)}"
            )
        if command.identity not in self.authorized:
            raise NotPermittedError(
                f"identity {command.identity or '(anonymous)'!r} may not command {self.name}"
            )
        validate_params(command.name, specs, command.params)
        job = _Job(command, getattr(self, f"do_{command.name}"))
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull as e:
            raise QueueFullError(
                f"{self.name} command queue is full ({self._queue.maxsize} waiting); "
                "command not queued"
            ) from e
        return job

    async def _command_loop(self) -> None:
        while True:
            job = await self._queue.get()
            job.acks.put_nowait(await self._execute(job))

    async def _execute(self, job: _Job) -> Ack:
        token = _current_job.set(job)
        timeout = job.command.timeout or self.command_timeout
        job.deadline = asyncio.get_running_loop().time() + timeout
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                result = await job.method(**job.command.params)
        except TimeoutError as e:
            outcome: Exception = (
                CommandTimeout(f"no completion within {timeout:g} s") if scope.expired() else e
            )
            return self._final_ack(job.command, outcome)
        except asyncio.CancelledError:
            job.acks.put_nowait(self._final_ack(job.command, CommandAborted("component closed")))
            raise
        except Exception as e:  # noqa: BLE001 -- any failure of a command becomes CMD_FAILED
            return self._final_ack(job.command, e)
        finally:
            _current_job.reset(token)
        return self._final_ack(job.command, result)

    def _final_ack(self, command: Command, outcome: Any) -> Ack:
        """The one place where a command's outcome becomes its final ack."""
        code, result, data = final_ack(outcome)
        if unexpected(outcome):
            self.log_message(
                logging.ERROR,
                f"{command.name} failed: {result}",
                traceback="".join(tb.format_exception(outcome)),
            )
        return self._ack(command, code, result, data=data)

    def _ack(
        self,
        command: Command,
        code: AckCode,
        result: str = "",
        timeout: float = 0.0,
        data: dict[str, Any] | None = None,
    ) -> Ack:
        return Ack(self.name, command.name, command.seq, code, result, timeout, data)

    def in_progress(self, remaining: float, message: str = "") -> None:
        """From inside a ``do_`` method: send CMD_INPROGRESS with the expected remaining time."""
        job = _current_job.get()
        if job is None:
            raise RuntimeError("in_progress() is only meaningful inside a command")
        job.acks.put_nowait(self._ack(job.command, AckCode.CMD_INPROGRESS, message, remaining))

    def command_time_left(self) -> float:
        """Seconds before the command being run times out (inf outside a command)."""
        job = _current_job.get()
        if job is None:
            return math.inf
        return job.deadline - asyncio.get_running_loop().time()

    # -------------------------------------------------------------- state machine
    async def _transition(self, command: str, *args: Any) -> None:
        t = TRANSITIONS[command]
        old = self._state
        if old not in t.allowed_from:
            allowed = ", ".join(sorted(s.name for s in t.allowed_from))
            raise CommandRejected(f"{command} is not allowed in {old.name}; allowed in {allowed}")
        await getattr(self, f"begin_{command}")(*args)
        self._state = t.to
        try:
            await getattr(self, f"end_{command}")(*args)
            await self.handle_summary_state()
        except BaseException:
            self._state = old
            with contextlib.suppress(Exception):
                await self.handle_summary_state()
            raise
        self._commanded_state = t.to
        if old == State.FAULT:
            self._error_code, self._error_report = 0, ""
        self._publish_summary_state()
        if command == "start" and self._group is not None:
            restarted = self._group.restart_failed()
            if restarted:
                self.log_message(
                    logging.WARNING, f"background task(s) restarted: {', '.join(restarted)}"
                )

    async def do_start(self, *, configurationOverride: str = "") -> None:
        await self._transition("start", configurationOverride)

    async def do_enable(self) -> None:
        await self._transition("enable")

    async def do_disable(self) -> None:
        await self._transition("disable")

    async def do_standby(self) -> None:
        await self._transition("standby")

    async def do_exitControl(self) -> None:
        await self._transition("exitControl")

    async def do_setLogLevel(self, *, level: int, identifier: str = "") -> None:
        if level < 0 or level > logging.CRITICAL:
            raise CommandRejected(f"level must be between 0 and {logging.CRITICAL}, got {level}")
        logging.getLogger(identifier or self.log.name).setLevel(level)
        self.publish("logLevel", {"level": level, "subsystem": identifier})

    async def begin_start(self, configuration_override: str) -> None:
        """Hook: validate and load the configuration; a failure leaves the state unchanged."""
        applied = await self.configure(configuration_override)
        self.publish("configurationApplied", applied)

    async def end_start(self, configuration_override: str) -> None: ...
    async def begin_enable(self) -> None: ...
    async def end_enable(self) -> None: ...
    async def begin_disable(self) -> None: ...
    async def end_disable(self) -> None: ...
    async def begin_standby(self) -> None: ...
    async def end_standby(self) -> None: ...
    async def begin_exitControl(self) -> None: ...
    async def end_exitControl(self) -> None: ...

    async def handle_summary_state(self) -> None:
        """Hook: start or stop the component's outputs to match :attr:`summary_state`."""

    # ---------------------------------------------------------------------- fault
    async def fault(self, code: int, report: str, traceback: str = "") -> None:
        """Enter FAULT: publish ``errorCode``, stop the outputs. Only ``standby`` leaves it.

        As ts_salobj's ``fault``: the state changes first, then each step is guarded on its
        own, so a failure in one (a hook that raises) neither skips the others nor escapes.
        """
        if self._state == State.FAULT:
            return
        self._error_code, self._error_report = code, report
        self._state = State.FAULT
        self._commanded_state = State.FAULT
        steps: tuple[tuple[str, Callable[[], Any]], ...] = (
            (
                "publish errorCode",
                lambda: self.publish(
                    "errorCode", {"errorCode": code, "errorReport": report, "traceback": traceback}
                ),
            ),
            ("log", lambda: self.log_message(logging.ERROR, f"FAULT {code}: {report}")),
            ("handle_summary_state", self.handle_summary_state),
            ("publish summaryState", self._publish_summary_state),
        )
        for what, step in steps:
            try:
                outcome = step()
                if asyncio.iscoroutine(outcome):
                    await outcome
            except Exception:
                self.log.exception("%s: fault(): %s failed", self.name, what)

    def assert_enabled(self, what: str = "") -> None:
        """Raise CommandRejected unless ENABLED (for commands that only make sense then)."""
        if self._state != State.ENABLED:
            action = f" {what}" if what else ""
            raise CommandRejected(
                f"{self.name} is {self._state.name}; it must be ENABLED to{action or ' do that'}"
            )

    def snapshot(self) -> dict[str, Any]:
        """What a watcher needs to know about this component right now."""
        return {
            "name": self.name,
            "summaryState": self._state.name,
            "commandedState": self._commanded_state.name,
            "errorCode": self._error_code,
            "errorReport": self._error_report,
            "version": self.version,
            "heartbeatInterval": self.heartbeat_interval,
            "restartCount": self.restart_count,
            "suppressedEvents": self._suppressed,
            "refusedPublish": self.checks.refused_publish,
            "refusedEvents": self.checks.refused_events,
            "queued": self._queue.qsize(),
            "commands": list(self.commands),
        }
