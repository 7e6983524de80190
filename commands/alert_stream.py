"""The alert stream and the alert archive on the gateway (DMS-REQ-0342/0343/0348, 0094).

* ``GET /alerts/v1/stream`` (WebSocket, token required): one subscription per connection. The
  client sends one JSON text frame, ``{"v":1,"op":"subscribe","filter":"<predefined name>"}``,
  ``{"v":1,"op":"subscribe","expression":"<filter language>"}`` or, for identities authorized
  as brokers, ``{"v":1,"op":"subscribe","full":true}``; the answer is ``subscribed`` or an
  ``error`` (``bad_filter``, ``not_permitted``, ...; the connection stays open). Alerts then
  arrive as binary frames, each exactly one Confluent-framed Avro alert. A filtered
  subscription gets the first 20 passing alerts of each visit. Text frames report
  ``{"op":"dropped","count":N}`` when the bounded queue overflowed; a subscriber that keeps
  overflowing is closed with code 4001 (too slow). ``{"op":"ping"}`` is answered with ``pong``.

  Positions (additive, opt-in): every archived batch (one CCD) has a durable, increasing archive
  ``position``. A subscribe frame with ``"positions": true`` gets, after each such batch's
  alerts, ``{"op":"batch","position":N,"visit":V,"detector":D,"alerts":K}`` (K of the batch's
  alerts were sent: 0 when none passed the filter), and ``subscribed`` says the ``position``
  the subscription starts after. ``"from": N`` (a non-negative integer, at most the archive's
  newest position; it implies ``positions``) resumes: the archived batches after N are sent
  first, through the same filter and per-visit limit, then the live stream, with no batch
  twice and none missing at the seam (the replay reads the archive until it has caught up
  with what the pump offered, then joins the fan-out without yielding, skipping any batch at
  or below what it replayed). Bad positions are ``bad_position`` errors; a replay that cannot
  read the archive sends ``replay_failed`` and closes the connection (code 1011).
* ``GET /api/v1/alerts/{diaSourceId}`` (token required): the archived alert, as the framed
  Avro bytes, or decoded JSON with ``?format=json`` (cutouts base64).
* ``GET /api/v1/alert-stream``: subscribers and counters.

The alerts come from the AlertPublisher component: a pump task long-polls its
``rpc_poll_alerts`` (see :mod:`base.alerts.spool`) and offers each CCD batch to the fan-out,
which never waits for a subscriber; each subscriber's own writer task does the sending.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from ray.actor import ActorHandle

from actors.peers import ActorPeer
from base.alerts import AlertFanout, FilterError, compile_filter, decode, predefined
from base.alerts.filters import filter_table
from base.alerts.stream import BatchMark, Subscription
from commands.auth import Authenticator
from commands.background import background
from commands.protocol import loads_json
from config.system import ComponentConfig
from state.contracts.values import INT64_MAX
from state.errors import ConnectionLostError, DmcsError, InvalidInputError
from state.fanout import Batch, Follower
from state.peers import Peer

log = logging.getLogger("dmcs.gateway.alerts")
DEFAULT_BROKERS = frozenset({"broker"})
PUBLISHER = "AlertPublisher"
CLOSE_TOO_SLOW = 4001
CLOSE_REPLAY_FAILED = 1011
#: A replay read: batches and bytes per ``rpc_replay_alerts`` call (a resuming subscriber holds
#: at most one read, or one larger batch, in the gateway while its socket takes it).
REPLAY_BATCHES = 16
REPLAY_BYTES = 8 << 20


@dataclass(frozen=True)
class SubscribeRequest:
    """A ``subscribe`` frame, checked once at the door."""

    full: bool = False
    filter: str | None = None
    expression: str | None = None
    positions: bool = False
    #: Resume after this archive position (None: start live).
    after: int | None = None

    @classmethod
    def parse(cls, frame: Mapping[str, Any]) -> SubscribeRequest:
        full, name, expression = frame.get("full"), frame.get("filter"), frame.get("expression")
        if not (full or isinstance(name, str) or isinstance(expression, str)):
            raise _BadFrame("subscribe needs 'filter' (a name), 'expression', or 'full': true")
        positions = frame.get("positions", False)
        if not isinstance(positions, bool):
            raise _BadFrame("'positions' must be true or false")
        after = frame.get("from")
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= INT64_MAX
        ):
            raise _BadPosition(
                f"'from' must be a non-negative integer archive position, got {after!r}"
            )
        return cls(
            full=bool(full),
            filter=name if not full and isinstance(name, str) else None,
            expression=(
                expression
                if not full and not isinstance(name, str) and isinstance(expression, str)
                else None
            ),
            positions=positions or after is not None,
            after=after,
        )


class AlertStream:
    """Pulls published batches from the publisher and fans them out to the subscribers."""

    def __init__(
        self,
        peer: Peer | None,
        brokers: frozenset[str] = DEFAULT_BROKERS,
        fanout: AlertFanout | None = None,
        poll_timeout: float = 5.0,
        max_batches: int = 64,
    ) -> None:
        self.peer = peer
        self.brokers = brokers
        self.fanout = fanout or AlertFanout(queue_size=1000, max_drops=1000)
        self.poll_timeout = poll_timeout
        self.max_batches = max_batches
        self.cursor: int | None = None
        #: The archive position of the newest batch offered to the fan-out (0: none yet).
        self.position = 0
        self.batches = self.alerts = self.missed = self.replayed = 0
        self._kick: dict[str, asyncio.Event] = {}
        self._names = itertools.count(1)
        self.follower: Follower[Mapping[str, Any]] = Follower(
            "alert stream", subscribe=self._start, poll=self._poll,
            deliver=lambda batch, _snapshot: self.publish(batch),
            transient=(DmcsError,), log=log, backoff=0.2,
        )  # fmt: skip

    @property
    def poll_errors(self) -> int:
        return self.follower.errors

    def publish(self, batch: Mapping[str, Any]) -> None:
        """Offer one spooled batch (``SpooledBatch.to_wire()``) to every subscriber."""
        view = memoryview(batch["data"])
        offsets = batch["offsets"].tolist()
        packets = [view[a:b] for a, b in itertools.pairwise(offsets)]
        table = filter_table(batch["table"], len(packets))
        position = batch.get("position")
        self.fanout.publish_visit(
            batch["visit"], batch["ids"], packets, table, position, batch.get("detector")
        )
        if position is not None:
            self.position = max(self.position, int(position))
        self.batches += 1
        self.alerts += len(packets)
        for name, sub in self.fanout.subscribers.items():
            if sub.lagging and name in self._kick:
                self._kick.pop(name).set()

    async def pump(self) -> None:
        """Follow the publisher's spool forever; an unreachable one is retried with backoff."""
        if self.peer is not None:
            await self.follower.run()

    async def _start(self) -> list[Mapping[str, Any]]:
        """Start at the spool's head (the live stream) once; after an error, go on from the
        cursor (a restarted publisher's spool says ``reset`` and is read from its start)."""
        if self.cursor is None:
            answer = await self._call_poll(None)
            self.cursor = int(answer["cursor"])
            self.position = max(self.position, int(answer.get("position", 0)))
        return []

    async def _poll(self) -> Batch[Mapping[str, Any]]:
        answer = await self._call_poll(self.cursor)
        self.missed += int(answer.get("missed", 0))
        self.cursor = int(answer["cursor"])
        return Batch(answer["batches"])

    async def _call_poll(self, cursor: int | None) -> dict[str, Any]:
        if self.peer is None:
            raise ConnectionLostError("no alert publisher in this system")
        return await self.peer.call("poll_alerts", cursor, self.max_batches, self.poll_timeout)

    def subscribe(self, identity: str, request: SubscribeRequest) -> Subscription:
        """A subscription from a client's ``subscribe`` frame; clear errors for bad ones.

        A resuming one (``request.after``) is offered no live batch until its replay has
        caught up (:meth:`replay`)."""
        name = f"{identity}#{next(self._names)}"
        if request.full:
            if identity not in self.brokers:
                raise _NotPermitted(f"identity {identity!r} is not authorized for the full stream")
            sub = self.fanout.subscribe(name, full_stream=True)
        elif request.filter is not None:
            sub = self.fanout.subscribe(name, predefined(request.filter))
        elif request.expression is not None:
            sub = self.fanout.subscribe(name, compile_filter(request.expression))
        else:
            raise _BadFrame("subscribe needs 'filter' (a name), 'expression', or 'full': true")
        sub.marks = request.positions
        sub.replaying = request.after is not None
        self._kick[name] = asyncio.Event()
        return sub

    async def check_position(self, after: int) -> dict[str, Any]:
        """The archive's ``oldest`` and ``newest`` positions and the ``visit`` of the batch at
        ``after``; ``_BadPosition`` if ``after`` is ahead of the newest, ``_Unavailable``
        without a readable archive."""
        try:
            span = await self._call("alert_positions", after)
        except DmcsError as e:
            raise _Unavailable(f"the alert archive is not available to resume from: {e}") from e
        newest = int(span["newest"])
        if after > newest:
            raise _BadPosition(
                f"position {after} is ahead of the archive (newest position {newest})"
            )
        return {"oldest": int(span["oldest"]), "newest": newest, "visit": span.get("visit")}

    async def replay(
        self, sub: Subscription, after: int, visit: int | None = None
    ) -> AsyncIterator[_Replayed]:
        """The archived batches after ``after`` as ``sub`` gets them, until the archive has
        nothing newer and the pump has offered nothing newer; then ``sub`` joins the live
        fan-out (no await between the last read and the join: no batch is lost or doubled).

        ``visit``: the visit of the batch at ``after``; a filtered subscriber first counts
        what it got of that visit's batches up to ``after`` against its per-visit limit."""
        if visit is not None and sub.per_visit_limit is not None:
            await self._count_visit(sub, visit, after)
        cursor = after
        while True:
            batches = await self._read(cursor, sub.filter is not None)
            if not batches:
                if cursor >= self.position:
                    sub.after, sub.replaying = cursor, False
                    return
                # the pump offered a batch committed after this read began: read again
                await asyncio.sleep(0.02)
                continue
            for batch in batches:
                chosen = self.fanout.choose(sub, batch["visit"], *_unpack(batch))
                sent = list(chosen[1]) if chosen else []
                self.replayed += len(sent)
                cursor = int(batch["position"])
                yield _Replayed(
                    sent, BatchMark(cursor, batch["visit"], batch["detector"], len(sent))
                )

    async def _count_visit(self, sub: Subscription, visit: int, upto: int) -> None:
        """Count, without sending, what ``sub`` got of ``visit`` up to position ``upto``."""
        cursor = 0
        while (sub.remaining(visit) or 0) > 0:
            batches = await self._read(cursor, True, visit, upto)
            if not batches:
                return
            for batch in batches:
                self.fanout.choose(sub, visit, *_unpack(batch))
                cursor = int(batch["position"])

    async def _read(self, after: int, table: bool, *only: int) -> list[Mapping[str, Any]]:
        try:
            answer = await self._call(
                "replay_alerts", after, REPLAY_BATCHES, REPLAY_BYTES, table, *only
            )
        except DmcsError as e:
            raise _ReplayFailed(f"the archive replay stopped after {after}: {e}") from e
        return list(answer["batches"])

    async def _call(self, method: str, *args: Any) -> Any:
        if self.peer is None:
            raise ConnectionLostError("no alert publisher in this system")
        return await self.peer.call(method, *args)

    def unsubscribe(self, name: str) -> None:
        self.fanout.unsubscribe(name)
        self._kick.pop(name, None)

    def kicked(self, name: str) -> asyncio.Event:
        return self._kick.get(name) or asyncio.Event()

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.peer is not None, "cursor": self.cursor, "batches": self.batches,
            "alerts": self.alerts, "missedBatches": self.missed, "pollErrors": self.poll_errors,
            "skippedBatches": self.follower.failed, "position": self.position,
            "replayedAlerts": self.replayed,
            "subscribers": [
                {"name": s.name, "full": s.filter is None,
                 "filter": s.filter.expression if s.filter else None, "delivered": s.delivered,
                 "dropped": s.dropped, "queued": s.queue.qsize(), "lagging": s.lagging,
                 "filterFailures": s.failures, "replaying": s.replaying}
                for s in self.fanout.subscribers.values()
            ],
        }  # fmt: skip


ALERT_STREAM = web.AppKey("alert_stream", AlertStream)
ALERT_AUTH = web.AppKey("alert_auth", Authenticator)


def publisher_name(component_configs: tuple[ComponentConfig, ...]) -> str:
    """The component that publishes alerts: the one whose class is an AlertPublisher."""
    for c in component_configs:
        if c.cls.rsplit(":", 1)[-1] == PUBLISHER:
            return c.name
    return PUBLISHER


def setup_alert_stream(
    app: web.Application,
    auth: Authenticator,
    components: Mapping[str, ActorHandle],
    component_configs: tuple[ComponentConfig, ...] = (),
    brokers: frozenset[str] = DEFAULT_BROKERS,
) -> AlertStream:
    """Add the stream and archive routes to the gateway, fed by the AlertPublisher if any."""
    name = publisher_name(component_configs)
    handle = components.get(name)
    peer = ActorPeer.of_handle(name, handle) if handle else None
    return setup_alert_routes(app, auth, peer, brokers)


def setup_alert_routes(
    app: web.Application,
    auth: Authenticator,
    peer: Peer | None,
    brokers: frozenset[str] = DEFAULT_BROKERS,
    fanout: AlertFanout | None = None,
) -> AlertStream:
    stream = AlertStream(peer, brokers, fanout)
    app[ALERT_STREAM] = stream
    app[ALERT_AUTH] = auth
    app.cleanup_ctx.append(background("gateway-alert-pump", lambda a: a[ALERT_STREAM].pump()))
    app.router.add_get("/alerts/v1/stream", stream_handler)
    app.router.add_get("/api/v1/alert-stream", stream_status)
    app.router.add_get("/api/v1/alerts/{diaSourceId}", fetch_alert)
    return stream


def _identity(request: web.Request) -> str:
    identity = request.app[ALERT_AUTH].identify(request)
    if not identity:
        raise web.HTTPUnauthorized(
            text="alerts need a bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return identity


async def stream_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[ALERT_STREAM].status())


async def fetch_alert(request: web.Request) -> web.Response:
    _identity(request)
    text = request.match_info["diaSourceId"]
    try:
        dia_source_id = int(text[:32])
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"diaSourceId must be an integer, got {text[:32]!r}") from e
    if not 0 <= dia_source_id <= INT64_MAX:
        raise web.HTTPBadRequest(text="diaSourceId must be a non-negative 64-bit integer")
    peer = request.app[ALERT_STREAM].peer
    if peer is None:
        raise web.HTTPServiceUnavailable(text="no alert publisher in this system")
    try:
        packet = await peer.call("fetch_alert", dia_source_id)
    except (ConnectionLostError, InvalidInputError) as e:
        raise web.HTTPServiceUnavailable(text=f"the alert archive is not available: {e}") from e
    if packet is None:
        raise web.HTTPNotFound(text=f"no archived alert with diaSourceId {dia_source_id}")
    if request.query.get("format") == "json":
        return web.json_response(decode(packet), dumps=_dumps)
    return web.Response(
        body=bytes(packet),
        content_type="application/octet-stream",
        headers={"X-Alert-Schema-Id": str(int.from_bytes(bytes(packet[1:5]), "big"))},
    )


def _dumps(value: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, bytes | bytearray | memoryview):
            return base64.b64encode(bytes(o)).decode("ascii")
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    return json.dumps(value, default=default)


def _frame(op: str, **fields: Any) -> str:
    return json.dumps({"v": 1, "op": op, **fields})


@dataclass(frozen=True)
class _Replayed:
    packets: list[memoryview]
    mark: BatchMark


def _unpack(
    batch: Mapping[str, Any],
) -> tuple[list[int], list[memoryview], dict[str, np.ndarray]]:
    """(ids, packets, filter table) of a batch in wire form."""
    view = memoryview(batch["data"])
    packets = [view[a:b] for a, b in itertools.pairwise(batch["offsets"].tolist())]
    ids = np.asarray(batch["ids"], dtype=np.int64).tolist()
    return ids, packets, filter_table(batch["table"], len(packets))


def _mark(mark: BatchMark) -> str:
    return _frame(
        "batch", position=mark.position, visit=mark.visit, detector=mark.detector,
        alerts=mark.count,
    )  # fmt: skip


async def stream_handler(request: web.Request) -> web.WebSocketResponse:
    identity = _identity(request)
    stream = request.app[ALERT_STREAM]
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 16, timeout=2.0)
    await ws.prepare(request)
    sub: Subscription | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                await ws.send_str(_frame("error", code="bad_frame", message="send JSON text"))
                continue
            if message.type != WSMsgType.TEXT:
                break
            try:
                request_frame = _parse(message.data)
                if request_frame["op"] == "ping":
                    await ws.send_str(_frame("pong", id=request_frame.get("id")))
                    continue
                if sub is not None:
                    raise _BadFrame("this connection already has a subscription")
                subscribe = SubscribeRequest.parse(request_frame)
                span = None
                if subscribe.after is not None:
                    span = await stream.check_position(subscribe.after)
                sub = stream.subscribe(identity, subscribe)
            except InvalidInputError as e:
                await ws.send_str(_frame("error", code=_code(e), message=str(e)))
                continue
            start = stream.position if subscribe.after is None else subscribe.after
            await ws.send_str(_subscribed(sub, start if sub.marks else None, span))
            visit = span["visit"] if span else None
            writer = asyncio.create_task(_serve(ws, stream, sub, subscribe.after, visit))
            evict = _evict(request, ws, stream.kicked(sub.name), writer)
            tasks += [writer, asyncio.create_task(evict)]
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if sub is not None:
            stream.unsubscribe(sub.name)
    return ws


def _subscribed(sub: Subscription, position: int | None, span: dict[str, Any] | None) -> str:
    extra: dict[str, Any] = {} if position is None else {"position": position}
    if span is not None:
        extra.update(oldest=span["oldest"], newest=span["newest"])
    return _frame(
        "subscribed", name=sub.name, full=sub.filter is None,
        expression=sub.filter.expression if sub.filter else None,
        perVisitLimit=sub.per_visit_limit, **extra,
    )  # fmt: skip


async def _serve(
    ws: web.WebSocketResponse,
    stream: AlertStream,
    sub: Subscription,
    after: int | None,
    visit: int | None = None,
) -> None:
    """The archive replay after ``after`` (if any), then the live queue."""
    try:
        if after is not None:
            async for replayed in stream.replay(sub, after, visit):
                for packet in replayed.packets:
                    await ws.send_bytes(packet)
                await ws.send_str(_mark(replayed.mark))
        await _writer(ws, sub)
    except _ReplayFailed as e:
        log.warning("alert subscriber %s: %s", sub.name, e)
        with contextlib.suppress(ConnectionError):
            await ws.send_str(_frame("error", code="replay_failed", message=str(e)))
            await ws.close(code=CLOSE_REPLAY_FAILED, message=b"archive replay failed")
    except ConnectionError as e:
        log.info("alert subscriber %s went away: %s", sub.name, e)


async def _writer(ws: web.WebSocketResponse, sub: Subscription) -> None:
    """Send this subscriber's queue, reporting drops; it may wait on a slow socket alone."""
    while not ws.closed:
        message = await sub.queue.get()
        dropped = sub.queue.new_drops()
        if dropped is not None:
            await ws.send_str(_frame("dropped", count=dropped))
        if isinstance(message, BatchMark):
            await ws.send_str(_mark(message))
        else:
            await ws.send_bytes(message.packet)


async def _evict(
    request: web.Request, ws: web.WebSocketResponse, kicked: asyncio.Event, writer: asyncio.Task
) -> None:
    """Close a subscriber the fan-out marked too slow (its writer may be stuck on the socket)."""
    await kicked.wait()
    writer.cancel()
    try:
        async with asyncio.timeout(2.0):
            await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow: alerts were dropped")
    except (TimeoutError, ConnectionError):
        if request.transport is not None:
            request.transport.abort()


def _parse(text: str) -> dict[str, Any]:
    try:
        value = loads_json(text)
    except InvalidInputError as e:
        raise _BadFrame(f"frame is not JSON: {e}") from e
    if not isinstance(value, dict) or value.get("v") != 1:
        raise _BadFrame('frames are JSON objects with "v": 1')
    if value.get("op") not in ("subscribe", "ping"):
        raise _BadFrame(f"unknown op {value.get('op')!r}; expected subscribe or ping")
    return value


def _code(e: InvalidInputError) -> str:
    if isinstance(e, FilterError):
        return "bad_filter"
    if isinstance(e, _NotPermitted):
        return "not_permitted"
    if isinstance(e, _BadPosition):
        return "bad_position"
    if isinstance(e, _Unavailable):
        return "unavailable"
    return "bad_frame"


class _BadFrame(InvalidInputError):
    """A frame that is not a valid stream request."""


class _NotPermitted(InvalidInputError):
    """The full stream asked for by an identity that is not a broker."""


class _BadPosition(InvalidInputError):
    """A resume position that is not a non-negative integer, or is ahead of the archive."""


class _Unavailable(InvalidInputError):
    """A resume asked of a system whose alert archive cannot be read now."""


class _ReplayFailed(DmcsError):
    """The archive replay of a resuming subscriber could not go on."""
