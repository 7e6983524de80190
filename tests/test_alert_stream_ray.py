"""The alert stream in a real system: the publisher is a Ray component actor, the gateway
long-polls it through its actor handle (``make_app`` wiring), subscribers use WebSockets."""

from __future__ import annotations

import json

import aiohttp

from base.alerts import decode
from tests.conftest import TOKENS, component_spec

PUBLISHER = "tests.alert_spool_component:AlertPublisher"


async def test_alerts_flow_from_a_component_actor_to_a_subscriber(system_factory) -> None:
    running = await system_factory(component_spec("AlertPublisher", PUBLISHER))
    ocs = {"Authorization": f"Bearer {TOKENS['ocs']}"}
    user = {"Authorization": f"Bearer {TOKENS['scientist']}"}
    base = running.http_url
    async with aiohttp.ClientSession() as session:
        for cmd in ("start", "enable"):
            async with session.post(
                f"{base}/api/v1/components/AlertPublisher/commands/{cmd}", headers=ocs
            ) as r:
                assert r.status == 200, await r.text()
        async with session.ws_connect(f"{base}/alerts/v1/stream", headers=user) as ws:
            await ws.send_str(
                json.dumps({"v": 1, "op": "subscribe", "expression": "diaSource.snr > 10"})
            )
            assert json.loads((await ws.receive(timeout=10)).data)["op"] == "subscribed"
            async with session.post(
                f"{base}/api/v1/components/AlertPublisher/commands/publishSample",
                headers=ocs, json={"visit": 77, "detector": 3, "n": 60},
            ) as r:  # fmt: skip
                body = await r.json()
                assert r.status == 200, body
            result = body["acks"][-1]["data"]
            passing = [i for i, s in zip(result["ids"], result["snr"], strict=True) if s > 10]
            want = passing[:20]
            got = []
            while len(got) < len(want):
                msg = await ws.receive(timeout=30)
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                got.append(decode(msg.data)["diaSourceId"])
            assert got == want
        async with session.get(f"{base}/api/v1/alert-stream") as r:
            status = await r.json()
        assert status["connected"] and status["alerts"] == 60 and status["batches"] == 1
        # This publisher has no archive: the fetch says so instead of hanging or 500.
        async with session.get(f"{base}/api/v1/alerts/{want[0]}", headers=user) as r:
            assert r.status == 503 and "no alert archive" in await r.text()
