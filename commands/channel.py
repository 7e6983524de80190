"""One WebSocket client's outbound side: a bounded event queue that never blocks the gateway."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from aiohttp import web

from commands.protocol import Codec, Frame, Op, frame


@dataclass(frozen=True, slots=True)
class Subscription:
    components: frozenset[str] | None
    topics: frozenset[str] | None

    def wants(self, component: str, topic: str) -> bool:
        return (self.components is None or component in self.components) and (
            self.topics is None or topic in self.topics
        )


class Channel:
    """Frames waiting for one client. Control frames (acks, errors) are never dropped; events
    beyond ``max_events`` push out the oldest, counted and reported with a ``dropped`` frame."""

    def __init__(self, ws: web.WebSocketResponse, codec: Codec, identity: str, max_events: int):
        self.ws = ws
        self.codec = codec
        self.identity = identity
        self.subscriptions: dict[int, Subscription] = {}
        self.in_flight = 0
        self.dropped = 0
        self._reported_dropped = 0
        self._control: deque[bytes | str] = deque()
        self._events: deque[bytes | str] = deque(maxlen=max_events)
        self._wakeup = asyncio.Event()

    def wants(self, component: str, topic: str) -> bool:
        return any(s.wants(component, topic) for s in self.subscriptions.values())

    @property
    def pending_control(self) -> int:
        """Control frames (acks, errors, snapshots) not yet written to the socket."""
        return len(self._control)

    def send(self, message: Frame) -> None:
        self._control.append(self.codec.encode(message))
        self._wakeup.set()

    def send_event(self, encoded: bytes | str) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(encoded)
        self._wakeup.set()

    async def write_loop(self) -> None:
        """Send queued frames until the socket closes; owned by the connection handler."""
        while not self.ws.closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._control or self._events:
                if self.ws.closed:
                    return
                if self._control:
                    await self._send_raw(self._control.popleft())
                    continue
                if self.dropped != self._reported_dropped:
                    self._reported_dropped = self.dropped
                    await self._send_raw(self.codec.encode(frame(Op.DROPPED, count=self.dropped)))
                await self._send_raw(self._events.popleft())

    async def _send_raw(self, payload: bytes | str) -> None:
        if isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        else:
            await self.ws.send_str(payload)
