"""The aiohttp gateway: WebSocket protocol, HTTP JSON API, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web
from ray.actor import ActorHandle
from ray.exceptions import RayError

from commands.alert_stream import setup_alert_stream
from commands.auth import Authenticator
from commands.background import background
from commands.channel import Channel
from commands.dashboard.routes import setup_dashboard
from commands.hub import Hub
from commands.metrics import GatewayMetrics
from commands.protocol import (
    SUBPROTOCOLS,
    Codec,
    ErrorCode,
    Op,
    error_code_of,
    frame,
    loads_json,
    request_id,
    validate_client_frame,
)
from config.system import ComponentConfig, GatewayConfig
from state.acks import AckCode
from state.contracts import ContractError, check_value
from state.errors import InvalidInputError
from state.events import (
    CAMERA_EVENTS,
    EXTERNAL_SOURCES,
    OCS_TELEMETRY,
    REPROCESS_SOURCE,
    REPROCESS_TELEMETRY,
    EventKind,
)
from state.fanout import TopicFilter

HUB = web.AppKey("hub", Hub)
AUTH = web.AppKey("auth", Authenticator)
CONFIG = web.AppKey("config", GatewayConfig)
OCS_IDENTITIES = web.AppKey("ocs_identities", frozenset)
BATCH_IDENTITIES = web.AppKey("batch_identities", frozenset)

#: Commands one connection may have waiting for a final ack.
MAX_IN_FLIGHT = 256
#: Subscriptions one connection may hold at once.
MAX_SUBSCRIPTIONS = 64
#: Acks, errors and snapshots waiting for a client that is not reading: above this the gateway
#: stops reading that client's frames until it catches up (memory stays bounded).
MAX_PENDING_CONTROL = 1024
#: Longest command timeout over HTTP, as over the WebSocket.
MAX_HTTP_TIMEOUT = 3600.0
#: Frames above the configured limit get an error frame and the connection stays up; frames
#: above this multiple are cut off by aiohttp itself (close code 1009) to bound memory.
HARD_LIMIT_FACTOR = 16

HTTP_STATUS = {
    AckCode.CMD_COMPLETE: 200,
    AckCode.CMD_NOPERM: 403,
    AckCode.CMD_FAILED: 422,
    AckCode.CMD_ABORTED: 409,
    AckCode.CMD_TIMEOUT: 504,
    AckCode.CMD_REJECTED: 503,
}


def make_app(
    config: GatewayConfig,
    components: dict[str, ActorHandle],
    bus: ActorHandle,
    tokens: dict[str, str],
    ocs_identities: frozenset[str] = frozenset({"ocs"}),
    component_configs: tuple[ComponentConfig, ...] = (),
) -> web.Application:
    app = web.Application(client_max_size=config.max_frame_bytes)
    app[HUB] = Hub(components, bus, GatewayMetrics())
    app[AUTH] = Authenticator(tokens)
    app[CONFIG] = config
    app[OCS_IDENTITIES] = ocs_identities
    app[BATCH_IDENTITIES] = frozenset(config.batch_identities)
    app.cleanup_ctx.append(_close_hub)
    app.cleanup_ctx.append(background("gateway-bus-pump", lambda a: a[HUB].pump()))
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/components/{name}", component_status)
    app.router.add_post("/api/v1/components/{name}/commands/{command}", http_command)
    app.router.add_post("/api/v1/telemetry/{topic}", http_telemetry)
    app.router.add_post("/api/v1/camera/{name}", http_camera)
    setup_dashboard(app, app[HUB], app[AUTH], component_configs)
    setup_alert_stream(app, app[AUTH], components, component_configs)
    return app


async def _close_hub(app: web.Application) -> AsyncIterator[None]:
    """After the pump has stopped: send the OCS input still queued, close every client."""
    yield
    await app[HUB].close()
    for channel in list(app[HUB].channels):
        await channel.ws.close()


# ------------------------------------------------------------------------ HTTP
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    alive, stale = hub.board.all_alive()
    ready = hub.pumping and alive
    body = {"ready": ready, "busConnected": hub.pumping, "staleComponents": stale}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    for status in hub.board.to_json():
        hub.metrics.component_up.labels(status["name"]).set(0 if status["stale"] else 1)
    hub.metrics.connections.set(len(hub.channels))
    return web.Response(body=hub.metrics.render(), content_type="text/plain", charset="utf-8")


async def status(request: web.Request) -> web.Response:
    return web.json_response({"components": request.app[HUB].board.to_json()})


async def component_status(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    name = request.match_info["name"]
    handle = hub.components.get(name)
    if handle is None:
        raise web.HTTPNotFound(text=f"unknown component {name!r}")
    board = next(s for s in hub.board.to_json() if s["name"] == name)
    try:
        async with asyncio.timeout(2.0):
            detail = await handle.snapshot.remote()
    except (TimeoutError, RayError) as e:  # the board still answers when the actor cannot
        detail = {"unreachable": f"{type(e).__name__}: {e}"}
    return web.json_response({**board, "detail": detail})


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; 400 for bad JSON, deep nesting or values no wire can carry."""
    if not request.can_read_body:
        return {}
    try:
        body = loads_json(await request.read())
        if not isinstance(body, dict):
            raise InvalidInputError("request body must be a JSON object")
        check_value(body, "body")
    except InvalidInputError as e:
        raise web.HTTPBadRequest(text=f"bad request body: {e}") from e
    return body


async def http_command(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    identity = request.app[AUTH].identify(request)
    params = await _json_body(request)
    timeout = request.query.get("timeout")
    try:
        timeout_s = float(timeout) if timeout else None
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"timeout must be a number, got {timeout!r}") from e
    if timeout_s is not None and not (
        math.isfinite(timeout_s) and 0 < timeout_s <= MAX_HTTP_TIMEOUT
    ):
        raise web.HTTPBadRequest(text=f"timeout must be in (0, {MAX_HTTP_TIMEOUT:g}] seconds")
    acks: list[dict[str, Any]] = []
    final = await hub.run_command(
        identity,
        request.match_info["name"],
        request.match_info["command"],
        params=params,
        timeout=timeout_s,
        on_ack=lambda ack: acks.append(ack.to_wire()),
    )
    # The ack says why (as over the WebSocket); the status agrees with GET of that component.
    known = request.match_info["name"] in hub.components
    status = HTTP_STATUS.get(final.code, 500) if known else 404
    return web.json_response({"acks": acks}, status=status)


async def _http_input(request: web.Request, name: str, kind: EventKind) -> web.Response:
    identity = request.app[AUTH].identify(request)
    try:
        source = _input_source(request.app, identity, kind, name)
    except _NotOcs as e:
        raise web.HTTPForbidden(text=str(e)) from e
    except _UnknownTopic as e:
        raise web.HTTPNotFound(text=str(e)) from e
    data = await _json_body(request)
    try:
        event = request.app[HUB].publish_input(source, name, data, kind)
    except ContractError as e:
        raise web.HTTPBadRequest(text=str(e)) from e
    return web.json_response({"seq": event.seq, "tai": event.tai})


async def http_telemetry(request: web.Request) -> web.Response:
    return await _http_input(request, request.match_info["topic"], "telemetry")


async def http_camera(request: web.Request) -> web.Response:
    return await _http_input(request, request.match_info["name"], "event")


def _input_source(app: web.Application, identity: str, kind: EventKind, topic: str) -> str:
    """The source an input is published as, once its topic and sender are checked.

    Telemetry comes from the OCS, or from batch reprocessing for its own topics; events come
    from the camera. Each source has its own list of identities allowed to send it.
    """
    if kind == "telemetry" and topic in REPROCESS_TELEMETRY:
        source, allowed, what = REPROCESS_SOURCE, app[BATCH_IDENTITIES], "batch telemetry"
    else:
        source = "OCS" if kind == "telemetry" else "Camera"
        allowed, what = app[OCS_IDENTITIES], "OCS input"
        known = OCS_TELEMETRY if kind == "telemetry" else CAMERA_EVENTS
        if topic not in known:
            label = "telemetry" if kind == "telemetry" else "camera"
            raise _UnknownTopic(f"unknown {label} topic {topic!r}; expected one of {sorted(known)}")
    if identity not in allowed:
        raise _NotOcs(f"identity {identity or '(anonymous)'!r} may not send {what}")
    return source


# ------------------------------------------------------------------- WebSocket
async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[HUB]
    config = request.app[CONFIG]
    identity = request.app[AUTH].identify(request)
    ws = web.WebSocketResponse(
        protocols=SUBPROTOCOLS,
        max_msg_size=config.max_frame_bytes * HARD_LIMIT_FACTOR,
        heartbeat=20.0,
    )
    await ws.prepare(request)
    channel = Channel(ws, Codec(ws.ws_protocol), identity, config.client_queue)
    hub.channels.add(channel)
    hub.metrics.connections.set(len(hub.channels))
    channel.send(frame(Op.HELLO, identity=identity, server="dmcs", protocol=ws.ws_protocol))
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(channel.write_loop())
            await _read_loop(request.app, channel, tg, config.max_frame_bytes)
            writer.cancel()
    finally:
        hub.channels.discard(channel)
        hub.metrics.connections.set(len(hub.channels))
        hub.metrics.client_dropped.inc(channel.dropped)
    return ws


async def _read_loop(
    app: web.Application, channel: Channel, tg: asyncio.TaskGroup, max_bytes: int
) -> None:
    hub = app[HUB]
    async for message in channel.ws:
        if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
            continue
        payload: bytes | str = message.data
        decoded: Any = None
        await _until_caught_up(channel)
        try:
            if len(payload) > max_bytes:
                raise _TooLarge(f"frame of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
            decoded = channel.codec.decode(payload)
            op = validate_client_frame(decoded)
            await _handle_frame(app, channel, tg, op, decoded)
        except InvalidInputError as e:
            code = error_code_of(e)
            hub.metrics.bad_frames.labels(code.value).inc()
            message_text = str(e)[:1000].encode("utf-8", "backslashreplace").decode("utf-8")
            channel.send(
                frame(Op.ERROR, id=request_id(decoded), code=code.value, message=message_text)
            )


async def _until_caught_up(channel: Channel) -> None:
    """Stop reading a client whose acks, errors and snapshots pile up unread."""
    while channel.pending_control > MAX_PENDING_CONTROL and not channel.ws.closed:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _handle_frame(
    app: web.Application,
    channel: Channel,
    tg: asyncio.TaskGroup,
    op: Op,
    message: dict[str, Any],
) -> None:
    hub = app[HUB]
    match op:
        case Op.COMMAND:
            if channel.in_flight >= MAX_IN_FLIGHT:
                raise _Overloaded(f"more than {MAX_IN_FLIGHT} commands waiting on this connection")
            channel.in_flight += 1
            tg.create_task(_command(hub, channel, message))
        case Op.SUBSCRIBE:
            sub_id = message["id"]
            if sub_id not in channel.subscriptions and len(channel.subscriptions) >= (
                MAX_SUBSCRIPTIONS
            ):
                raise _Overloaded(f"more than {MAX_SUBSCRIPTIONS} subscriptions on this connection")
            wanted = TopicFilter.of(message.get("components"), message.get("topics"))
            _check_sources(hub, wanted)
            channel.subscriptions[sub_id] = wanted
            channel.send(frame(Op.SUBSCRIBED, id=sub_id))
            hub.snapshot_for(channel, sub_id)
        case Op.UNSUBSCRIBE:
            channel.subscriptions.pop(message["id"], None)
        case Op.TELEMETRY | Op.CAMERA:
            await _ocs_input(app, channel, op, message)
        case Op.PING:
            channel.send(frame(Op.PONG, id=message["id"]))


def _check_sources(hub: Hub, wanted: TopicFilter) -> None:
    """Refuse a subscription to a component no event can come from (it would wait for ever)."""
    known = set(hub.components) | EXTERNAL_SOURCES
    unknown = sorted((wanted.components or frozenset()) - known)
    if unknown:
        raise _UnknownComponent(
            f"unknown component{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))};"
            f" known components: {', '.join(sorted(known))}"
        )


async def _ocs_input(
    app: web.Application, channel: Channel, op: Op, message: dict[str, Any]
) -> None:
    kind: EventKind = "telemetry" if op == Op.TELEMETRY else "event"
    topic = message["topic"] if op == Op.TELEMETRY else message["name"]
    source = _input_source(app, channel.identity, kind, topic)
    app[HUB].publish_input(source, topic, message["data"], kind)


async def _command(hub: Hub, channel: Channel, message: dict[str, Any]) -> None:
    request_id = message["id"]
    try:
        await hub.run_command(
            channel.identity,
            message["component"],
            message["name"],
            params=message.get("params") or {},
            timeout=message.get("timeout"),
            on_ack=lambda ack: channel.send_ack(request_id, ack),
        )
    finally:
        channel.in_flight -= 1


class _TooLarge(InvalidInputError):
    code = ErrorCode.TOO_LARGE


class _Overloaded(InvalidInputError):
    code = ErrorCode.OVERLOADED


class _NotOcs(InvalidInputError):
    code = ErrorCode.NOT_PERMITTED


class _UnknownTopic(InvalidInputError):
    code = ErrorCode.UNKNOWN_TOPIC


class _UnknownComponent(InvalidInputError):
    code = ErrorCode.UNKNOWN_COMPONENT
