"""One WebSocket client's outbound side: a bounded event queue that never blocks the gateway."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from aiohttp import web

from commands.protocol import Codec, Frame, Op, frame
from state.acks import Ack
from state.fanout import DropOldestQueue, TopicFilter

log = logging.getLogger("dmcs.gateway")

#: What the codecs raise for a value they cannot encode: an int wider than 64 bits or a lone
#: surrogate for msgpack, an unknown type, a structure nested too deep.
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)


def encode_frame(codec: Codec, message: Frame) -> bytes | str | None:
    """``message`` encoded, or None (logged) when it cannot be: the caller skips it."""
    try:
        return codec.encode(message)
    except ENCODE_ERRORS as e:
        what = message.get("event", {}) if message.get("op") == Op.EVENT else message
        log.warning(
            "cannot encode a %s frame (%s %s/%s) as %s: %s: %s",
            message.get("op"), what.get("component", "-"), what.get("topic", "-"),
            what.get("seq", "-"), "msgpack" if codec.binary else "JSON", type(e).__name__, e,
        )  # fmt: skip
        return None


class Channel:
    """Frames waiting for one client. Control frames (acks, errors) are never dropped; events
    beyond ``max_events`` push out the oldest, counted and reported with a ``dropped`` frame."""

    def __init__(self, ws: web.WebSocketResponse, codec: Codec, identity: str, max_events: int):
        self.ws = ws
        self.codec = codec
        self.identity = identity
        self.subscriptions: dict[int, TopicFilter] = {}
        self.in_flight = 0
        #: Frames for this client that could not be encoded, and so were skipped.
        self.encode_failures = 0
        self._control: deque[bytes | str] = deque()
        self._events: DropOldestQueue[bytes | str] = DropOldestQueue(max_events)
        self._wakeup = asyncio.Event()

    @property
    def dropped(self) -> int:
        """Events pushed out of the queue because this client did not read them in time."""
        return self._events.dropped

    def wants(self, component: str, topic: str) -> bool:
        return any(s.wants(component, topic) for s in self.subscriptions.values())

    @property
    def pending_control(self) -> int:
        """Control frames (acks, errors, snapshots) not yet written to the socket."""
        return len(self._control)

    def send(self, message: Frame) -> bool:
        """Queue a control frame; False (counted) when it cannot be encoded."""
        encoded = encode_frame(self.codec, message)
        if encoded is None:
            self.encode_failures += 1
            return False
        self._control.append(encoded)
        self._wakeup.set()
        return True

    def send_ack(self, request_id: int, ack: Ack) -> None:
        """Queue an ack; one that cannot be encoded goes out with its data left out and its
        text escaped, so that the client still learns how its command ended."""
        if not self.send(frame(Op.ACK, id=request_id, ack=ack.to_wire())):
            self.send(frame(Op.ACK, id=request_id, ack=_plain(ack).to_wire()))

    def send_event(self, encoded: bytes | str) -> None:
        self._events.put(encoded)
        self._wakeup.set()

    async def write_loop(self) -> None:
        """Send queued frames until the socket closes; owned by the connection handler."""
        try:
            while not self.ws.closed:
                await self._wakeup.wait()
                self._wakeup.clear()
                await self._flush()
        except ConnectionError as e:
            log.info("client %r went away: %s", self.identity, e)

    async def _flush(self) -> None:
        while self._control or not self._events.empty():
            if self.ws.closed:
                return
            if self._control:
                await self._send_raw(self._control.popleft())
                continue
            dropped = self._events.new_drops()
            if dropped is not None:
                await self._send_raw(self.codec.encode(frame(Op.DROPPED, count=dropped)))
            await self._send_raw(self._events.get_nowait())

    async def _send_raw(self, payload: bytes | str) -> None:
        if isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        else:
            await self.ws.send_str(payload)


def _plain(ack: Ack) -> Ack:
    def ascii_text(text: str) -> str:
        return text.encode("ascii", "backslashreplace").decode("ascii")

    result = f"{ack.result} (the ack's data could not be encoded and was left out)".strip()
    return Ack(
        ascii_text(ack.component), ascii_text(ack.command), ack.seq, ack.code,
        ascii_text(result), ack.timeout, None,
    )  # fmt: skip
