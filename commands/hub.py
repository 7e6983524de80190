"""The gateway's core, without HTTP: runs commands on component actors, pumps the event bus
out to connected clients, and publishes OCS input onto the bus."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayError

from actors.bus import follow_bus
from actors.ordered_sender import OrderedSender
from commands.channel import Channel, encode_frame
from commands.metrics import GatewayMetrics
from commands.protocol import Codec, Op, frame
from commands.status import StatusBoard
from state.acks import Ack, AckCode
from state.clock import tai_now
from state.command import Command
from state.contracts import check_payload
from state.events import Event, EventKind
from state.fanout import TopicFilter

log = logging.getLogger("dmcs.gateway")
#: Seconds the event pump lets the bus gather a burst after its first event: every event of
#: a CCD's stages goes to the gateway, and one poll for a burst costs the bus, Ray and the
#: gateway one call instead of one per component's send; watchers see it 20 ms later.
PUMP_LINGER_S = 0.02


class Hub:
    """Shared by every connection of one gateway process."""

    def __init__(
        self,
        components: dict[str, ActorHandle],
        bus: ActorHandle,
        metrics: GatewayMetrics,
    ) -> None:
        self.components = components
        self.bus = bus
        self.metrics = metrics
        self.board = StatusBoard(list(components))
        self.channels: set[Channel] = set()
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        #: Event frames that could not be encoded (per event and encoding, and per snapshot
        #: frame) and listener calls that raised: each skipped, logged and counted.
        self.encode_failures = 0
        self.listener_failures = 0
        #: Called with every event from the bus before it is fanned out (the dashboard).
        self.listeners: list[Callable[[Event], None]] = []
        self._seq = itertools.count(1)
        self._input_seq: dict[tuple[str, str], int] = {}
        #: OCS input goes to the bus in order (see actors.ordered_sender).
        self._input = OrderedSender(self.bus.publish_many.remote, "gateway-ocs-input")
        self._codecs = {True: Codec(None), False: Codec("dmcs.v1.json")}
        self.follower = follow_bus(
            bus, "gateway", TopicFilter(), self._dispatch, log=log, queue_size=50_000,
            max_events=2000, on_dropped=self.metrics.bus_dropped.set,
            on_failure=lambda _wire, _error: self.metrics.events_skipped.inc(),
            linger=PUMP_LINGER_S,
        )  # fmt: skip

    @property
    def pumping(self) -> bool:
        """Whether the event pump is subscribed to the bus."""
        return self.follower.connected

    # ------------------------------------------------------------------- commands
    async def run_command(
        self,
        identity: str,
        component: str,
        name: str,
        *,
        params: dict[str, Any],
        timeout: float | None,
        on_ack: Callable[[Ack], None],
    ) -> Ack:
        """Send a command to its component; report every ack; return the final one."""
        command = Command(component, name, identity, next(self._seq), params, timeout)
        started = time.perf_counter()
        handle = self.components.get(component)
        if handle is None:
            known = ", ".join(sorted(self.components))
            final = Ack(
                component,
                name,
                command.seq,
                AckCode.CMD_FAILED,
                f"unknown component {component!r}; known components: {known}",
            )
            on_ack(final)
            return self._count(final, started)
        try:
            stream = handle.command.options(num_returns="streaming").remote(command.to_wire())
            async for ref in stream:
                ack = Ack.from_wire(await ref)
                on_ack(ack)
                if ack.code.is_final:
                    return self._count(ack, started)
        except RayError as e:
            reason = "crashed" if isinstance(e, RayActorError) else "failed"
            final = Ack(
                component,
                name,
                command.seq,
                AckCode.CMD_FAILED,
                f"{component} {reason} while running {name}: {type(e).__name__}",
            )
            on_ack(final)
            return self._count(final, started)
        final = Ack(component, name, command.seq, AckCode.CMD_FAILED, "no final ack")
        on_ack(final)
        return self._count(final, started)

    def _count(self, ack: Ack, started: float) -> Ack:
        component, command = self.metrics.command_labels(
            ack.component, ack.command, self.components
        )
        self.metrics.commands.labels(component, command, ack.code.name).inc()
        self.metrics.command_seconds.observe(time.perf_counter() - started)
        return ack

    # ---------------------------------------------------------------- OCS input
    def publish_input(
        self, source: str, topic: str, data: dict[str, Any], kind: EventKind
    ) -> Event:
        """Put OCS telemetry or a camera event on the bus, numbered per (source, topic).

        Raises ContractError, publishing nothing, when ``data`` does not fit the topic's contract.
        """
        check_payload(topic, data)
        key = (source, topic)
        seq = self._input_seq.get(key, 0) + 1
        self._input_seq[key] = seq
        event = Event(source, topic, seq, tai_now(), data, kind)
        self._input.put(event.to_wire())
        return event

    async def close(self) -> None:
        """Send the OCS input still queued, then stop."""
        await self._input.close()

    # ---------------------------------------------------------------- event pump
    async def pump(self) -> None:
        """Pull every event from the bus and fan it out, forever (see state.fanout.Follower)."""
        await self.follower.run()

    def _dispatch(self, wire: dict[str, Any], snapshot: bool = False) -> None:
        event = Event.from_wire(wire)
        self.board.update(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the fan-out
                self.listener_failures += 1
                log.exception(
                    "event listener %r failed on %s/%s", listener, event.component, event.topic
                )
        self.latest[(event.component, event.topic)] = wire
        self.metrics.events.inc()
        encoded: dict[bool, bytes | str | None] = {}
        for channel in self.channels:
            if channel.wants(event.component, event.topic):
                binary = channel.codec.binary
                if binary not in encoded:
                    message = frame(Op.EVENT, event=wire, snapshot=False)
                    encoded[binary] = encode_frame(self._codecs[binary], message)
                    if encoded[binary] is None:
                        self._failed_encoding()
                payload = encoded[binary]
                if payload is not None:
                    channel.send_event(payload)

    def snapshot_for(self, channel: Channel, sub_id: int) -> None:
        """Send the latest event of every matching (component, topic) to a new subscription."""
        subscription = channel.subscriptions[sub_id]
        for (component, topic), wire in list(self.latest.items()):
            if not subscription.wants(component, topic):
                continue
            if not channel.send(frame(Op.EVENT, event=wire, snapshot=True, sub=sub_id)):
                self._failed_encoding()

    def _failed_encoding(self) -> None:
        self.encode_failures += 1
        self.metrics.encode_failures.inc()
