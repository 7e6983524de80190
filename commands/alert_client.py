"""The alert stream from Python, with a resume cursor (``GET /alerts/v1/stream``).

    async with Client(url, token=...) as client, client.alerts(full=True) as alerts:
        async for packet in alerts:  # one Confluent-framed Avro alert (bytes)
            handle(decode(packet))
            remember(alerts.position)  # the last batch received whole

The subscription asks for batch positions. When its connection is lost (a network blip, a
gateway restart), when the gateway closes it (too slow, a failed replay) or when the gateway
reports dropped alerts, it reconnects with backoff and resumes after the last batch it
received whole (``"from"``): the gateway replays the archive from there, then goes on live.
The alerts of the unfinished batch it had already yielded are skipped when they come again,
so each alert is yielded once. A resume answered ``unavailable`` (the archive not readable
yet: a publisher still starting) is retried too. ``after`` starts from a remembered position
instead of live.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from base.alerts.packet import alert_id
from state.errors import ConnectionLostError, InvalidInputError

STREAM_PATH = "/alerts/v1/stream"
#: Gateway answers after which the subscription reconnects and resumes (others are raised):
#: a replay that failed, an archive not readable yet (a publisher still starting).
_RESUMABLE_ERRORS = frozenset({"replay_failed", "unavailable"})


class AlertSubscription:
    """One alert subscription that resumes itself; iterate it for framed alert packets."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        full: bool = False,
        filter: str | None = None,
        expression: str | None = None,
        after: int | None = None,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        answer_timeout: float = 30.0,
        on_frame: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        chosen = [x for x in (full or None, filter, expression) if x is not None]
        if len(chosen) != 1:
            raise InvalidInputError("give exactly one of full, filter, expression")
        self._session = session
        self.url = url
        self._request: dict[str, Any] = {"v": 1, "op": "subscribe", "positions": True}
        if full:
            self._request["full"] = True
        elif filter is not None:
            self._request["filter"] = filter
        else:
            self._request["expression"] = expression
        #: The archive position of the last batch received whole (the resume cursor).
        self.position = after
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.answer_timeout = answer_timeout
        self.on_frame = on_frame
        #: Times the subscription reconnected and resumed.
        self.reconnects = 0
        #: Alerts the gateway reported dropped (each report made the subscription resume).
        self.dropped = 0
        #: The gateway's last ``subscribed`` answer.
        self.subscribed: dict[str, Any] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closed = False
        #: diaSourceIds yielded since the last batch frame (an unfinished batch).
        self._unfinished: set[int] = set()

    async def __aenter__(self) -> AlertSubscription:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._drop_connection()

    def __aiter__(self) -> AlertSubscription:
        return self

    async def __anext__(self) -> bytes:
        backoff = 0.1
        while not self._closed:
            if self._ws is None:
                if not self.reconnect:
                    raise ConnectionLostError("the alert stream connection was lost")
                try:
                    await self._open()
                except ConnectionLostError:
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, self.max_backoff)
                    continue
                self.reconnects += 1
                backoff = 0.1
            assert self._ws is not None
            message = await self._ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                packet = bytes(message.data)
                sid = alert_id(packet)
                if sid in self._unfinished:
                    continue  # sent again by the resume: yielded before the connection broke
                self._unfinished.add(sid)
                return packet
            if message.type == aiohttp.WSMsgType.TEXT:
                await self._on_text(json.loads(message.data))
                continue
            await self._drop_connection()
        raise StopAsyncIteration

    async def _on_text(self, frame: dict[str, Any]) -> None:
        if self.on_frame is not None:
            self.on_frame(frame)
        op = frame.get("op")
        if op == "batch":
            self.position = int(frame["position"])
            self._unfinished.clear()
        elif op == "dropped":
            self.dropped = int(frame["count"])
            if self.position is not None:  # resume: the archive has what the queue dropped
                await self._drop_connection()
        elif op == "error":
            if frame.get("code") not in _RESUMABLE_ERRORS:
                raise InvalidInputError(f"{frame.get('code')}: {frame.get('message')}")
            await self._drop_connection()

    async def _open(self) -> None:
        request = dict(self._request)
        if self.position is not None:
            request["from"] = self.position
        try:
            async with asyncio.timeout(self.answer_timeout):
                ws = await self._session.ws_connect(self.url, heartbeat=20.0, max_msg_size=0)
                try:
                    await ws.send_str(json.dumps(request))
                    answer = await ws.receive()
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError as e:
            raise ConnectionLostError(f"{self.url} did not answer the subscription") from e
        except aiohttp.WSServerHandshakeError as e:
            if e.status in (401, 403):
                raise InvalidInputError(f"the gateway refused the token (HTTP {e.status})") from e
            raise ConnectionLostError(f"cannot open {self.url}: {e}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise ConnectionLostError(f"cannot open {self.url}: {e}") from e
        if answer.type != aiohttp.WSMsgType.TEXT:
            await ws.close()
            raise ConnectionLostError(f"{self.url} closed before answering the subscription")
        frame = json.loads(answer.data)
        if frame.get("op") != "subscribed":
            await ws.close()
            why = f"{frame.get('code')}: {frame.get('message')}"
            if frame.get("code") in _RESUMABLE_ERRORS:
                raise ConnectionLostError(why)
            raise InvalidInputError(why)
        self.subscribed = frame
        if self.position is None and frame.get("position") is not None:
            self.position = int(frame["position"])
        self._ws = ws

    async def _drop_connection(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            await ws.close()
