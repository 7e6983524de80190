"""The gateway's core, without HTTP: runs commands on component actors, pumps the event bus
out to connected clients, and publishes OCS input onto the bus."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayError

from actors.ordered_sender import OrderedSender
from commands.channel import Channel
from commands.metrics import GatewayMetrics
from commands.protocol import Codec, Op, frame
from commands.status import StatusBoard
from state.acks import Ack, AckCode
from state.clock import tai_now
from state.command import Command
from state.contracts import check_payload
from state.events import Event, EventKind

log = logging.getLogger("dmcs.gateway")


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
        self.pumping = False
        #: Called with every event from the bus before it is fanned out (the dashboard).
        self.listeners: list[Callable[[Event], None]] = []
        self._seq = itertools.count(1)
        self._input_seq: dict[tuple[str, str], int] = {}
        #: OCS input goes to the bus in order (see actors.ordered_sender).
        self._input = OrderedSender(self.bus.publish_many.remote, "gateway-ocs-input")
        self._codecs = {True: Codec(None), False: Codec("dmcs.v1.json")}

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
        """Pull every event from the bus and fan it out; resubscribe if the bus restarts."""
        sid = f"gateway-{uuid.uuid4().hex[:8]}"
        backoff = 0.1
        while True:
            try:
                for wire in await self.bus.subscribe.remote(sid, None, None, 50_000):
                    self._dispatch(wire)
                self.pumping = True
                while True:
                    batch = await self.bus.poll.remote(sid, 2000, 1.0)
                    if not batch["known"]:
                        break
                    for wire in batch["events"]:
                        self._dispatch(wire)
                    self.metrics.bus_dropped.set(batch["dropped"])
                    backoff = 0.1
            except RayError as e:
                self.pumping = False
                log.warning("event bus unreachable (%s); retrying in %.1f s", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, wire: dict[str, Any]) -> None:
        event = Event.from_wire(wire)
        self.board.update(event)
        for listener in self.listeners:
            listener(event)
        self.latest[(event.component, event.topic)] = wire
        self.metrics.events.inc()
        encoded: dict[bool, bytes | str] = {}
        for channel in self.channels:
            if channel.wants(event.component, event.topic):
                binary = channel.codec.binary
                if binary not in encoded:
                    encoded[binary] = self._codecs[binary].encode(
                        frame(Op.EVENT, event=wire, snapshot=False)
                    )
                channel.send_event(encoded[binary])

    def snapshot_for(self, channel: Channel, sub_id: int) -> None:
        """Send the latest event of every matching (component, topic) to a new subscription."""
        subscription = channel.subscriptions[sub_id]
        for (component, topic), wire in list(self.latest.items()):
            if subscription.wants(component, topic):
                channel.send(frame(Op.EVENT, event=wire, snapshot=True, sub=sub_id))
