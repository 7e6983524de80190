"""HTTP routes of the operator dashboard: the pages, their static files and the JSON API.

Pages: ``/dashboard/`` (components, alarms, the night, the log; ``/`` leads there) and
``/dashboard/schedule`` (next visit and predicted schedule). API:
``/api/v1/dashboard/snapshot``, ``…/session``,
``/api/v1/alarms`` with ``acknowledge``/``mute``/``unmute``, ``/api/v1/schedule``,
``/api/v1/night``, ``/api/v1/cameras/{name}`` (a focal plane's detectors). Watching is
open; alarm actions need a token whose identity is on the alarm's component's authorized
list, as commands do (CMD_NOPERM otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from commands.auth import Authenticator
from commands.background import background
from commands.dashboard.alarms import AlarmError
from commands.dashboard.focal_plane import focal_plane
from commands.dashboard.service import Dashboard
from commands.hub import Hub
from commands.protocol import loads_json
from config.system import ComponentConfig
from state.acks import AckCode
from state.errors import ConfigurationError, InvalidInputError, NotPermittedError

STATIC_DIR = Path(__file__).resolve().parent / "static"
DASHBOARD = web.AppKey("dashboard", Dashboard)
DASHBOARD_AUTH = web.AppKey("dashboard_auth", Authenticator)


def setup_dashboard(
    app: web.Application,
    hub: Hub,
    auth: Authenticator,
    components: Iterable[ComponentConfig] = (),
) -> Dashboard:
    """Create the dashboard, feed it the hub's events and add its routes to ``app``."""
    configs = {c.name: c for c in components}
    authorized = {
        name: frozenset(configs[name].authorized) if name in configs else frozenset()
        for name in hub.components
    }
    simulation = {
        name: bool(c.settings.get("simulation_mode", False)) for name, c in configs.items()
    }
    dashboard = Dashboard(hub.board, hub.publish_input, authorized, simulation)
    hub.listeners.append(dashboard.observe)
    app[DASHBOARD] = dashboard
    app[DASHBOARD_AUTH] = auth
    app.cleanup_ctx.append(background("dashboard-tick", lambda a: a[DASHBOARD].run()))
    r = app.router
    r.add_get("/", _redirect)
    r.add_get("/dashboard", _redirect)
    r.add_get("/dashboard/", _page("index.html"))
    r.add_get("/dashboard/schedule", _page("schedule.html"))
    r.add_static("/dashboard/static", STATIC_DIR)
    r.add_get("/api/v1/dashboard/snapshot", snapshot)
    r.add_get("/api/v1/dashboard/session", session)
    r.add_get("/api/v1/night", night)
    r.add_get("/api/v1/schedule", schedule)
    r.add_get("/api/v1/cameras/{name}", camera)
    r.add_get("/api/v1/alarms", alarms)
    r.add_post("/api/v1/alarms/{name}/{action:acknowledge|mute|unmute}", alarm_action)
    return dashboard


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard/")


def _page(name: str) -> Any:
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})

    return handler


async def snapshot(request: web.Request) -> web.Response:
    return web.json_response(request.app[DASHBOARD].snapshot())


async def session(request: web.Request) -> web.Response:
    identity = request.app[DASHBOARD_AUTH].identify(request)
    return web.json_response(request.app[DASHBOARD].session(identity))


async def night(request: web.Request) -> web.Response:
    return web.json_response(request.app[DASHBOARD].night.to_json())


async def schedule(request: web.Request) -> web.Response:
    return web.json_response(request.app[DASHBOARD].schedule.to_json())


async def camera(request: web.Request) -> web.Response:
    try:
        geometry = focal_plane(request.match_info["name"])
    except ConfigurationError as e:
        return web.json_response({"error": str(e)}, status=404)
    return web.json_response(geometry, headers={"Cache-Control": "max-age=3600"})


async def alarms(request: web.Request) -> web.Response:
    book = request.app[DASHBOARD].alarms
    return web.json_response({"alarms": book.to_json(), "counts": book.counts()})


def _refusal(status: int, code: AckCode, reason: str) -> web.Response:
    body = {"code": int(code), "ack": code.name, "reason": reason}
    return web.json_response(body, status=status)


async def alarm_action(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD]
    identity = request.app[DASHBOARD_AUTH].identify(request)
    name, action = request.match_info["name"], request.match_info["action"]
    try:
        body = await _body(request)
        if name not in dashboard.alarms.alarms:
            return _refusal(404, AckCode.CMD_FAILED, f"no alarm named {name!r}")
        match action:
            case "acknowledge":
                alarm = dashboard.acknowledge(name, body.get("severity", "NONE"), identity)
            case "mute":
                duration = _number(body.get("duration"), "duration")
                alarm = dashboard.mute(name, duration, body.get("severity", "CRITICAL"), identity)
            case _:
                alarm = dashboard.unmute(name, identity)
    except NotPermittedError as e:
        return _refusal(403, AckCode.CMD_NOPERM, str(e))
    except (AlarmError, InvalidInputError) as e:
        return _refusal(422, AckCode.CMD_FAILED, str(e))
    return web.json_response({"code": int(AckCode.CMD_COMPLETE), "alarm": alarm})


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = loads_json(await request.read())
    if not isinstance(body, dict):
        raise InvalidInputError("request body must be a JSON object")
    return body


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name} must be a number of seconds, got {repr(value)[:40]}")
    try:
        number = float(value)
    except OverflowError as e:
        raise InvalidInputError(f"{name} is out of range") from e
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be a finite number of seconds")
    return number
