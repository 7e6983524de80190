"""A subscriber's share of the focal plane at the event bus (``DetectorShare``), without Ray:
a CCD processor hears only its own detectors' per-CCD events on the shared topics, every other
event unchanged and in order, and a filter that follows the configuration reaches the bus."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.bus import EventBus, follow_bus
from actors.component_actor import load_component_class
from actors.ordered_sender import OrderedSender
from base.prompt.alert_publisher import AlertPublisher
from base.prompt.ccd_processor import CcdProcessor
from config.system import load_system_config
from state.errors import ConfigurationError
from state.fanout import DetectorShare, TopicFilter
from tests.standard import until

log = logging.getLogger("test.bus_share")


def _ccd(topic: str, seq: int, detector: Any, **data: Any) -> dict[str, Any]:
    return {
        "component": "SummitBuffer" if topic == "imageInBuffer" else "Ingest",
        "topic": topic, "seq": seq, "tai": float(seq), "kind": "event",
        "data": {"visit": 7, "detector": detector, **data},
    }  # fmt: skip


async def test_a_share_hears_only_its_detectors_on_its_topics_and_everything_else() -> None:
    bus = EventBus()
    share = DetectorShare(3, 1, frozenset({"imageInBuffer"})).to_wire()
    await bus.subscribe("mine", ["SummitBuffer", "Ingest"], None, share=share)
    await bus.subscribe("all", ["SummitBuffer", "Ingest"], None)
    published = [_ccd("imageInBuffer", d + 1, d) for d in range(9)]
    published += [_ccd("imageIngested", d + 1, d) for d in range(9)]
    published += [_ccd("imageInBuffer", 10, None), _ccd("imageInBuffer", 11, True)]
    await bus.publish_many(published)
    mine = (await bus.poll("mine", timeout=0))["events"]
    in_buffer = [e["data"]["detector"] for e in mine if e["topic"] == "imageInBuffer"]
    assert in_buffer == [1, 4, 7, None, True], "own detectors, and events naming none"
    assert [e for e in mine if e["topic"] == "imageIngested"] == published[9:18]
    assert (await bus.poll("all", timeout=0))["events"] == published, "others unchanged"


async def test_refilter_keeps_the_queue_and_applies_to_what_follows() -> None:
    bus = EventBus()
    await bus.subscribe("p", None, ["imageInBuffer"])
    await bus.publish(_ccd("imageInBuffer", 1, 1))
    share = DetectorShare(2, 0, frozenset({"imageInBuffer"})).to_wire()
    assert await bus.refilter("p", None, ["imageInBuffer"], share)
    await bus.publish_many([_ccd("imageInBuffer", 2, 1), _ccd("imageInBuffer", 3, 2)])
    got = (await bus.poll("p", timeout=0))["events"]
    assert [e["seq"] for e in got] == [1, 3]
    assert not await bus.refilter("gone", None, None, None)


def test_a_share_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="share 2 of 2"):
        DetectorShare(2, 2, frozenset({"imageInBuffer"}))


class _Remote:
    """The plain bus behind the ``.remote`` calls that ``follow_bus`` makes on the actor."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method: Callable[..., Awaitable[Any]] = getattr(self._bus, name)
        calls = self.calls

        class Call:
            @staticmethod
            def remote(*args: Any) -> Awaitable[Any]:
                calls.append(name)
                return method(*args)

        return Call


async def test_a_follower_sends_its_changed_filter_before_the_next_poll() -> None:
    bus = EventBus()
    remote = _Remote(bus)
    wanted = [TopicFilter.of(None, ["imageInBuffer"])]
    got: list[int] = []
    follower = follow_bus(
        remote, "p", lambda: wanted[0], lambda wire, _snap: got.append(wire["seq"]), log=log,
        poll_timeout=0.05,
    )  # fmt: skip
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: follower.connected)
        await bus.publish(_ccd("imageInBuffer", 1, 1))
        await until(lambda: got == [1])
        wanted[0] = TopicFilter.of(None, ["imageInBuffer"], DetectorShare(2, 0, frozenset(
            {"imageInBuffer"})))  # fmt: skip
        await until(lambda: "refilter" in remote.calls)
        await bus.publish_many([_ccd("imageInBuffer", 2, 1), _ccd("imageInBuffer", 3, 2)])
        await until(lambda: got == [1, 3])
        assert remote.calls.count("subscribe") == 1 and remote.calls.count("refilter") == 1
    finally:
        task.cancel()


@pytest.mark.parametrize("scheduling", ["availability", "fixed"])
def test_a_processor_asks_only_for_its_own_detectors_per_ccd_events(
    tmp_path: Path, scheduling: str
) -> None:
    settings = {"index": 1, "pool_size": 2, "scheduling": scheduling}
    processor = CcdProcessor(
        "CcdProcessor1", sink=lambda _event: None, settings=settings, data_dir=tmp_path
    )
    wanted = processor.listen_filter()
    assert wanted.share is not None and (wanted.share.count, wanted.share.index) == (2, 1)
    for detector in range(8):
        wire = _ccd("imageInBuffer", 1, detector)
        assert wanted.wants_wire(wire) == (detector % 2 == 1)
        ingested = wanted.wants_wire(_ccd("imageIngested", 1, detector))
        assert ingested == (scheduling == "availability" or detector % 2 == 1)
    next_visit = {"component": "Camera", "topic": "nextVisit", "data": {"visit": 7}}
    assert wanted.wants_wire(next_visit)
    settings["index"] = 2
    with pytest.raises(ConfigurationError, match="processor 2 of a pool of 2 does not exist"):
        CcdProcessor(
            "CcdProcessor2", sink=lambda _event: None, settings=settings, data_dir=tmp_path / "2"
        )


async def test_periodic_events_share_a_send_and_ride_with_the_next_urgent_one() -> None:
    sent: list[list[str]] = []

    async def send_many(batch: list[str]) -> None:
        sent.append(batch)

    sender = OrderedSender(send_many, "test", hold=1.0)
    sender.put("heartbeat", urgent=False)
    await asyncio.sleep(0.05)
    sender.put("status", urgent=False)
    await asyncio.sleep(0.05)
    assert sent == [], "periodic events wait for the hold"
    await until(lambda: sent == [["heartbeat", "status"]])
    sender.put("heartbeat", urgent=False)
    sender.put("imageIngested")
    await until(lambda: len(sent) == 2)
    assert sent[1] == ["heartbeat", "imageIngested"], "in order, at once"
    sender.put("last", urgent=False)
    await sender.close()
    assert sent[2:] == [["last"]], "close sends what is held"


async def test_the_alert_publisher_hears_only_failed_ccds_and_every_next_visit() -> None:
    bus = EventBus()
    wanted = AlertPublisher("AlertPublisher", sink=lambda _event: None).listen_filter().to_wire()
    await bus.subscribe("ap", wanted["components"], wanted["topics"], 100, None,
                        wanted.get("onlyFailed"))  # fmt: skip
    done = [
        {"component": "CcdProcessor0", "topic": "ccdProcessed", "seq": d, "tai": 0.0,
         "data": {"visit": 7, "detector": d, "statusCode": 0 if d % 3 else 1}}
        for d in range(1, 10)
    ]  # fmt: skip
    nxt = {"component": "OCS", "topic": "nextVisit", "seq": 1, "tai": 0.0, "data": {"visit": 8}}
    await bus.publish_many([*done, nxt])
    got = (await bus.poll("ap", timeout=0))["events"]
    assert got == [done[2], done[5], done[8], nxt]


def test_no_component_listens_to_a_topic_another_holds_back() -> None:
    classes = [load_component_class(c.cls) for c in load_system_config().components]
    listened = {t for cls in classes for t in cls.listen_topics}
    held = {t: cls.__name__ for cls in classes for t in cls.held_topics}
    assert held, "the per-CCD reports are held"
    assert not listened & set(held), f"held topics a component waits on: {listened & set(held)}"
