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
which never waits for a subscriber (:mod:`commands.alert_feed`, also the archive replay of a
resuming subscriber); each subscriber's own writer task does the sending.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import WSMsgType, web
from ray.actor import ActorHandle

from actors.peers import ActorPeer
from base.alerts import AlertFanout, FilterError, decode
from base.alerts.stream import BatchMark, Subscription
from commands.alert_feed import (
    DEFAULT_BROKERS,
    AlertStream,
    BadFrame,
    BadPosition,
    NotPermitted,
    ReplayFailed,
    SubscribeRequest,
    Unavailable,
)
from commands.auth import Authenticator
from commands.background import background
from commands.protocol import loads_json
from config.system import ComponentConfig
from state.contracts.values import INT64_MAX
from state.errors import ConnectionLostError, InvalidInputError
from state.peers import Peer

log = logging.getLogger("dmcs.gateway.alerts")
PUBLISHER = "AlertPublisher"
CLOSE_TOO_SLOW = 4001
CLOSE_REPLAY_FAILED = 1011


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
                    raise BadFrame("this connection already has a subscription")
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
    except ReplayFailed as e:
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
        raise BadFrame(f"frame is not JSON: {e}") from e
    if not isinstance(value, dict) or value.get("v") != 1:
        raise BadFrame('frames are JSON objects with "v": 1')
    if value.get("op") not in ("subscribe", "ping"):
        raise BadFrame(f"unknown op {value.get('op')!r}; expected subscribe or ping")
    return value


def _code(e: InvalidInputError) -> str:
    if isinstance(e, FilterError):
        return "bad_filter"
    if isinstance(e, NotPermitted):
        return "not_permitted"
    if isinstance(e, BadPosition):
        return "bad_position"
    if isinstance(e, Unavailable):
        return "unavailable"
    return "bad_frame"
