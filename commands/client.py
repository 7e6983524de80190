"""The async Python client of the dmcs gateway.

    async with Client("ws://127.0.0.1:8765/ws", token="...") as client:
        ack = await client.command("HeaderService", "start", timeout=10)
        await client.set_state("HeaderService", State.ENABLED)
        async for event in client.subscribe(components=["HeaderService"]):
            print(event.topic, event.data)

Alerts (``GET /alerts/v1/stream``) come by :meth:`Client.alerts`, a subscription of its own
that resumes from its last batch position after a lost connection
(:mod:`commands.alert_client`):

    async with client.alerts(expression="diaSource.snr > 10", after=last) as alerts:
        async for packet in alerts:
            ...

A command returns its final :class:`~state.acks.Ack` when it succeeds and raises an
:class:`~state.errors.AckError` subclass carrying the ack otherwise. The client reconnects with
exponential backoff after a lost connection and resubscribes; commands in flight at that
moment fail with :class:`~state.errors.ConnectionLostError` (they may or may not have run).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from commands.alert_client import STREAM_PATH, AlertSubscription
from commands.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, Codec, Op, frame
from state.acks import Ack, AckCode
from state.contracts import check_payload
from state.errors import (
    AckError,
    CommandAbortedError,
    CommandFailedError,
    CommandNoPermissionError,
    CommandQueueFullError,
    CommandTimeoutError,
    ConnectionLostError,
    InvalidInputError,
)
from state.events import Event
from state.fanout import DropOldestQueue, GapCounter, TopicFilter
from state.states import State, parse_state, transition_path

log = logging.getLogger("dmcs.client")

_ERRORS: dict[AckCode, type[AckError]] = {
    AckCode.CMD_FAILED: CommandFailedError,
    AckCode.CMD_NOPERM: CommandNoPermissionError,
    AckCode.CMD_ABORTED: CommandAbortedError,
    AckCode.CMD_TIMEOUT: CommandTimeoutError,
    AckCode.CMD_REJECTED: CommandQueueFullError,
}
#: Extra seconds the client waits past a command's own timeout for the component's answer.
TIMEOUT_MARGIN = 2.0
DEFAULT_TIMEOUT = 60.0


@dataclass(slots=True)
class _Pending:
    on_ack: Callable[[Ack], None] | None
    final: asyncio.Future[Ack]


@dataclass(slots=True)
class _Subscription:
    filter: TopicFilter
    snapshot: bool
    queue: DropOldestQueue[Event]
    #: (component, topic) → (seq, tai) of the last event delivered, so that the snapshot a
    #: resubscription starts with does not deliver again what was delivered before.
    seen: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)

    def wants(self, event: Event) -> bool:
        return self.filter.wants(event.component, event.topic)


class EventStream:
    """A confirmed subscription (:meth:`Client.open_subscription`): iterate it for events."""

    def __init__(self, client: Client, sub_id: int, sub: _Subscription) -> None:
        self._client = client
        self._id = sub_id
        self._sub = sub

    @property
    def dropped(self) -> int:
        """Events this client dropped because the stream was not read fast enough."""
        return self._sub.queue.dropped

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._sub.queue.get()

    async def aclose(self) -> None:
        await self._client._unsubscribe(self._id)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Client:
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        use_json: bool = False,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        subscription_queue: int = 10_000,
        request_timeout: float = 30.0,
    ) -> None:
        self.url = url
        #: Seconds the gateway gets to accept the connection and to answer an HTTP request.
        self.request_timeout = request_timeout
        self.token = token
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.subscription_queue = subscription_queue
        self.identity = ""
        self.gaps = GapCounter()
        self.server_dropped = 0
        #: Frames from the gateway that could not be decoded or handled (skipped).
        self.bad_frames = 0
        self._subprotocol = SUBPROTOCOL_JSON if use_json else SUBPROTOCOL_MSGPACK
        self._codec = Codec(self._subprotocol)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._subs: dict[int, _Subscription] = {}
        self._confirming: dict[int, asyncio.Future[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    # ---------------------------------------------------------------- connection
    async def __aenter__(self) -> Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(headers=headers)
        try:
            await self._connect()
        except BaseException:
            await self._session.close()
            raise
        self._reader = asyncio.create_task(self._read_forever(), name="dmcs-client-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self._fail_pending(ConnectionLostError("client closed"))

    async def _connect(self) -> None:
        assert self._session is not None
        try:
            async with asyncio.timeout(self.request_timeout):
                self._ws = await self._session.ws_connect(
                    self.url, protocols=(self._subprotocol,), heartbeat=20.0, max_msg_size=0
                )
        except TimeoutError as e:
            raise ConnectionLostError(
                f"{self.url} did not accept the connection within {self.request_timeout:g} s"
            ) from e
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 401:
                raise InvalidInputError(f"the gateway refused the token: {e.message}") from e
            raise ConnectionLostError(f"cannot connect to {self.url}: {e}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise ConnectionLostError(f"cannot connect to {self.url}: {e}") from e
        for sub_id, sub in self._subs.items():
            await self._send(self._subscribe_frame(sub_id, sub))
        self._connected.set()

    async def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            assert self._ws is not None
            async for message in self._ws:
                if message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    self._receive(message.data)
                    backoff = 0.1
            self._connected.clear()
            lost = ConnectionLostError("connection to the gateway lost")
            self._fail_pending(lost)
            if not self.reconnect:
                self._end_subscriptions(lost)
                return
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                try:
                    await self._connect()
                    break
                except ConnectionLostError as e:
                    log.warning("reconnect failed: %s; next try in %.1f s", e, backoff)
                except InvalidInputError as e:  # the token refused: retrying cannot help
                    log.error("reconnect refused: %s; this client stops", e)
                    self._end_subscriptions(ConnectionLostError(f"cannot reconnect: {e}"))
                    return

    def _end_subscriptions(self, error: Exception) -> None:
        """Every subscription raises ``error`` once its queued events are read, instead of
        waiting for events from a gateway this client no longer talks to."""
        for sub in self._subs.values():
            sub.queue.end(error)

    def _receive(self, payload: bytes | str) -> None:
        """Handle one frame; one that cannot be decoded or handled is logged, counted, skipped."""
        try:
            self._dispatch(self._codec.decode(payload))
        except Exception as e:  # noqa: BLE001 -- one bad frame must not stop the reader
            self.bad_frames += 1
            log.warning("skipped a frame from the gateway: %s: %s", type(e).__name__, e)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.final.done():
                p.final.set_exception(error)

    def _dispatch(self, message: dict[str, Any]) -> None:
        match message.get("op"):
            case Op.ACK:
                self._on_ack(message)
            case Op.EVENT:
                event = Event.from_wire(message["event"])
                snapshot = bool(message.get("snapshot"))
                if not snapshot:
                    self.gaps.see(event)
                target = message.get("sub")
                key, mark = (event.component, event.topic), (event.seq, event.tai)
                for sub_id, sub in self._subs.items():
                    if not sub.wants(event):
                        continue
                    if snapshot and not (sub.snapshot and target == sub_id):
                        continue
                    if snapshot and sub.seen.get(key) == mark:
                        continue  # delivered before the connection was lost
                    sub.seen[key] = mark
                    sub.queue.put(event)
            case Op.ERROR:
                pending = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
                error = InvalidInputError(f"{message.get('code')}: {message.get('message')}")
                confirmed = self._confirming.get(message.get("id"))  # type: ignore[arg-type]
                if pending is not None and not pending.final.done():
                    pending.final.set_exception(error)
                elif confirmed is not None and not confirmed.done():
                    confirmed.set_exception(error)
                else:
                    log.warning("gateway error: %s", error)
            case Op.SUBSCRIBED:
                confirmed = self._confirming.get(message.get("id"))  # type: ignore[arg-type]
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
            case Op.HELLO:
                self.identity = str(message.get("identity", ""))
            case Op.DROPPED:
                self.server_dropped = int(message.get("count", 0))

    def _on_ack(self, message: dict[str, Any]) -> None:
        pending = self._pending.get(message["id"])
        if pending is None:
            return
        ack = Ack.from_wire(message["ack"])
        if pending.on_ack is not None:
            pending.on_ack(ack)
        if ack.code.is_final:
            del self._pending[message["id"]]
            if not pending.final.done():
                pending.final.set_result(ack)

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionLostError("not connected to the gateway")
        payload = self._codec.encode(message)
        try:
            if isinstance(payload, bytes):
                await self._ws.send_bytes(payload)
            else:
                await self._ws.send_str(payload)
        except (aiohttp.ClientError, ConnectionError) as e:
            raise ConnectionLostError(f"send failed: {e}") from e

    async def wait_connected(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    # ------------------------------------------------------------------ commands
    async def command(
        self,
        component: str,
        name: str,
        *,
        timeout: float | None = None,
        on_ack: Callable[[Ack], None] | None = None,
        **params: Any,
    ) -> Ack:
        """Run a command; return its CMD_COMPLETE ack or raise the AckError matching its end."""
        request_id = next(self._ids)
        final: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(on_ack, final)
        message = frame(Op.COMMAND, id=request_id, component=component, name=name, params=params)
        if timeout is not None:
            message["timeout"] = timeout
        wait = (timeout or DEFAULT_TIMEOUT) + TIMEOUT_MARGIN
        try:
            await self._send(message)
            async with asyncio.timeout(wait):
                ack = await final
        except TimeoutError as e:
            ack = Ack(component, name, 0, AckCode.CMD_TIMEOUT, f"no final ack within {wait:g} s")
            raise CommandTimeoutError(ack) from e
        finally:
            self._pending.pop(request_id, None)
        if ack.code != AckCode.CMD_COMPLETE:
            raise _ERRORS.get(ack.code, CommandFailedError)(ack)
        return ack

    def _http_url(self, path: str) -> str:
        base = self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        return base.rsplit("/ws", 1)[0] + path

    async def _get_json(self, path: str) -> dict[str, Any]:
        assert self._session is not None
        try:
            async with (
                asyncio.timeout(self.request_timeout),
                self._session.get(self._http_url(path)) as response,
            ):
                if response.status == 404:
                    raise InvalidInputError(await response.text())
                response.raise_for_status()
                return dict(await response.json())
        except TimeoutError as e:
            raise ConnectionLostError(
                f"the gateway did not answer {path} within {self.request_timeout:g} s"
            ) from e
        except aiohttp.ClientError as e:
            raise ConnectionLostError(f"request {path} failed: {e}") from e

    def alerts(
        self,
        *,
        full: bool = False,
        filter: str | None = None,
        expression: str | None = None,
        after: int | None = None,
    ) -> AlertSubscription:
        """An alert subscription (one of ``full``, ``filter``, ``expression``): live, or
        after the archive position ``after``; it resumes by itself after a lost connection
        (``reconnect`` of this client). Use it as an async context manager."""
        if self._session is None:
            raise ConnectionLostError("the client is not open (use it in 'async with')")
        url = self.url.rsplit("/ws", 1)[0] + STREAM_PATH
        return AlertSubscription(
            self._session, url, full=full, filter=filter, expression=expression, after=after,
            reconnect=self.reconnect, max_backoff=self.max_backoff,
            answer_timeout=self.request_timeout,
        )  # fmt: skip

    async def status(self) -> list[dict[str, Any]]:
        """Every component's status as the gateway sees it (GET /api/v1/status)."""
        return list((await self._get_json("/api/v1/status"))["components"])

    async def component_detail(self, component: str) -> dict[str, Any]:
        """The component's own snapshot (``unreachable`` says why when it cannot answer)."""
        return dict((await self._get_json(f"/api/v1/components/{component}"))["detail"])

    async def get_state(self, component: str) -> State:
        """The component's summary state, asked of the component itself."""
        detail = await self.component_detail(component)
        if "summaryState" not in detail:
            raise ConnectionLostError(f"{component} is unreachable: {detail.get('unreachable')}")
        return parse_state(detail["summaryState"])

    async def set_state(
        self,
        component: str,
        target: State | str,
        *,
        configuration_override: str = "",
        timeout: float = 30.0,
    ) -> list[Ack]:
        """Walk ``component`` to ``target`` through the state commands; return their acks."""
        path = transition_path(await self.get_state(component), parse_state(target))
        acks = []
        for name in path:
            params = {"configurationOverride": configuration_override} if name == "start" else {}
            acks.append(await self.command(component, name, timeout=timeout, **params))
        return acks

    async def set_system_state(
        self,
        target: State | str,
        components: Sequence[str] | None = None,
        *,
        timeout: float = 60.0,
    ) -> dict[str, State]:
        """Walk every component (or ``components``) to ``target`` at once; their new states.

        A component that refuses raises its :class:`AckError` after the others have finished.
        """
        names = list(components) if components else [c["name"] for c in await self.status()]
        results = await asyncio.gather(
            *(self.set_state(name, target, timeout=timeout) for name in names),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return {name: parse_state(target) for name in names}

    # ------------------------------------------------------------------- events
    def _subscribe_frame(self, sub_id: int, sub: _Subscription) -> dict[str, Any]:
        return frame(Op.SUBSCRIBE, id=sub_id, **sub.filter.to_wire())

    async def open_subscription(
        self,
        components: Iterable[str] | None = None,
        topics: Iterable[str] | None = None,
        *,
        snapshot: bool = True,
        timeout: float = 10.0,
    ) -> EventStream:
        """Subscribe and return once the gateway has confirmed it: no event published after
        this returns is missed. Iterate the stream; close it (or ``async with`` it) when done.
        """
        sub_id = next(self._ids)
        sub = _Subscription(
            TopicFilter.of(components, topics), snapshot, DropOldestQueue(self.subscription_queue)
        )
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subs[sub_id] = sub
        self._confirming[sub_id] = confirmed
        stream = EventStream(self, sub_id, sub)
        try:
            await self._send(self._subscribe_frame(sub_id, sub))
            async with asyncio.timeout(timeout):
                await confirmed
        except TimeoutError as e:
            await stream.aclose()
            raise ConnectionLostError(
                f"the gateway did not confirm the subscription within {timeout:g} s"
            ) from e
        except BaseException:
            await stream.aclose()
            raise
        finally:
            self._confirming.pop(sub_id, None)
        return stream

    async def subscribe(
        self,
        components: Iterable[str] | None = None,
        topics: Iterable[str] | None = None,
        *,
        snapshot: bool = True,
    ) -> AsyncIterator[Event]:
        """Yield matching events: first the latest of each topic (if ``snapshot``), then live.

        The subscription starts at the first iteration; use :meth:`open_subscription` when
        events sent right after subscribing must not be missed.
        """
        async with await self.open_subscription(components, topics, snapshot=snapshot) as stream:
            async for event in stream:
                yield event

    async def _unsubscribe(self, sub_id: int) -> None:
        if self._subs.pop(sub_id, None) is not None:
            with contextlib.suppress(ConnectionLostError):
                await self._send(frame(Op.UNSUBSCRIBE, id=sub_id))

    # ----------------------------------------------------------------- OCS input
    async def send_telemetry(self, topic: str, **data: Any) -> None:
        """Send OCS telemetry; ContractError, sending nothing, if ``data`` breaks its contract."""
        check_payload(topic, data)
        await self._send(frame(Op.TELEMETRY, topic=topic, data=data))

    async def send_camera_event(self, name: str, **data: Any) -> None:
        """Send a camera event; ContractError, sending nothing, if ``data`` breaks its contract."""
        check_payload(name, data)
        await self._send(frame(Op.CAMERA, name=name, data=data))
