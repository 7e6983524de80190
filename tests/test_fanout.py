"""The fan-out primitives (state/fanout.py), and the bus and client channel built on them,
without Ray."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import pytest
from aiohttp import web

from actors.bus import EventBus
from commands.channel import Channel
from commands.protocol import SUBPROTOCOL_MSGPACK, Codec
from state.acks import Ack, AckCode
from state.errors import ConnectionLostError, InvalidInputError
from state.events import Event
from state.fanout import Batch, DropOldestQueue, Follower, GapCounter, TopicFilter
from tests.standard import until

log = logging.getLogger("test.fanout")


@pytest.mark.parametrize("everything", [None, [], ["*"], ["HeaderService", "*"], "*", ()])
def test_none_empty_and_star_all_mean_every_name(everything: Any) -> None:
    f = TopicFilter.of(everything, everything)
    assert f == TopicFilter()
    assert f.wants("Anything", "anyTopic")
    assert f.to_wire() == {"components": None, "topics": None}


def test_a_filter_keeps_only_its_names() -> None:
    f = TopicFilter.of(["HeaderService"], "heartbeat")
    assert f.wants("HeaderService", "heartbeat")
    assert not f.wants("HeaderService", "summaryState")
    assert not f.wants("Ingest", "heartbeat")
    assert f.wants_wire({"component": "HeaderService", "topic": "heartbeat"})
    assert f.to_wire() == {"components": ["HeaderService"], "topics": ["heartbeat"]}
    assert TopicFilter.of(**f.to_wire()) == f


async def test_queue_drops_the_oldest_and_counts_once() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    assert [q.put(i) for i in range(5)] == [True, True, True, False, False]
    assert (len(q), q.dropped) == (3, 2)
    assert q.new_drops() == 2
    assert q.new_drops() is None
    assert q.take(2) == [2, 3]
    assert q.peek() == 4 and len(q) == 1
    assert await q.get() == 4
    assert q.empty()
    for empty in (q.get_nowait, q.peek):
        with pytest.raises(asyncio.QueueEmpty):
            empty()
    with pytest.raises(ValueError, match="at least one"):
        DropOldestQueue(0)


async def test_queue_wait_and_get_wake_on_put() -> None:
    q: DropOldestQueue[str] = DropOldestQueue(10)
    assert await q.wait(0.01) is False
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.put("x")
    assert await asyncio.wait_for(waiter, 1) == "x"
    q.put("y")
    assert await q.wait(5) is True


def _event(topic: str, seq: int) -> Event:
    return Event("C", topic, seq, 0.0, {}, "event")


def test_gap_counter_counts_missing_sequence_numbers_per_topic() -> None:
    gaps = GapCounter()
    for topic, seq in [("a", 1), ("a", 2), ("b", 7), ("a", 5), ("b", 8), ("b", 10)]:
        gaps.see(_event(topic, seq))
    assert gaps.missing == 2 + 1


class _Source:
    """A scripted source: each poll answers the next step (a Batch or an exception)."""

    def __init__(self, steps: list[Batch[int] | Exception]) -> None:
        self.steps = steps
        self.subscribes = 0

    async def subscribe(self) -> list[int]:
        self.subscribes += 1
        return [100 + self.subscribes]

    async def poll(self) -> Batch[int]:
        if not self.steps:
            await asyncio.sleep(3600)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


async def test_follower_resubscribes_backs_off_and_contains_a_bad_item() -> None:
    source = _Source(
        [
            Batch([1, 2]),
            Batch([], known=False),  # the source restarted: subscribe again
            Batch([3, 13, 4]),  # 13 makes deliver raise: skipped, counted
            ConnectionLostError("gone"),  # unreachable: back off, subscribe again
            RuntimeError("a bug in the source"),  # unexpected: logged, same as above
            Batch([5]),
        ]
    )
    got: list[tuple[int, bool]] = []
    skipped: list[tuple[int, str]] = []

    async def deliver(item: int, snapshot: bool) -> None:
        if item == 13:
            raise OverflowError("unlucky")
        got.append((item, snapshot))

    follower = Follower(
        "test", subscribe=source.subscribe, poll=source.poll, deliver=deliver,
        transient=(ConnectionLostError,), log=log, backoff=0.001,
        on_failure=lambda item, e: skipped.append((item, type(e).__name__)),
    )  # fmt: skip
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: (5, False) in got, timeout=5)
        assert follower.connected
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert got == [
        (101, True), (1, False), (2, False),
        (102, True), (3, False), (4, False),
        (103, True), (104, True), (5, False),
    ]  # fmt: skip
    assert (follower.failed, follower.errors, follower.subscribes) == (1, 2, 4)
    assert skipped == [(13, "OverflowError")]


def _wire(component: str, topic: str, seq: int) -> dict[str, Any]:
    return {"component": component, "topic": topic, "seq": seq, "tai": 0.0, "data": {}}


async def test_bus_filters_with_the_one_rule_and_drops_oldest() -> None:
    bus = EventBus()
    await bus.publish(_wire("A", "x", 1))
    assert await bus.subscribe("all", ["*"], None) == [_wire("A", "x", 1)]
    assert await bus.subscribe("b-only", ["B"], []) == []
    await bus.subscribe("tiny", None, ["x"], maxsize=2)
    for seq in (2, 3, 4):
        await bus.publish(_wire("A", "x", seq))
    await bus.publish(_wire("B", "y", 1))
    everything = await bus.poll("all", timeout=0)
    assert [(e["component"], e["seq"]) for e in everything["events"]] == [
        ("A", 2), ("A", 3), ("A", 4), ("B", 1),
    ]  # fmt: skip
    assert [e["seq"] for e in (await bus.poll("b-only", timeout=0))["events"]] == [1]
    tiny = await bus.poll("tiny", timeout=0)
    assert ([e["seq"] for e in tiny["events"]], tiny["dropped"]) == ([3, 4], 1)
    assert (await bus.poll("nobody", timeout=0))["known"] is False
    stats = await bus.stats()
    assert stats["subscribers"]["tiny"] == {"queued": 0, "dropped": 1, "delivered": 2}


async def test_bus_refuses_a_malformed_event_and_publishes_the_rest_of_the_batch() -> None:
    bus = EventBus()
    await bus.subscribe("all")
    with pytest.raises(InvalidInputError, match="component and a topic"):
        await bus.publish({"topic": "x"})
    batch = [_wire("A", "x", 1), {"component": "A"}, ["not", "a", "map"],
             {"component": 7, "topic": "x"}, _wire("A", "x", 2)]  # fmt: skip
    await bus.publish_many(batch)
    got = (await bus.poll("all", timeout=0))["events"]
    assert [e["seq"] for e in got] == [1, 2]
    stats = await bus.stats()
    assert (stats["published"], stats["refused"]) == (2, 3)


async def test_a_lingering_poll_answers_a_burst_at_once_and_a_backlog_without_waiting() -> None:
    bus = EventBus()
    for sid in ("eager", "lingering"):
        await bus.subscribe(sid)

    async def burst() -> None:
        for seq in (1, 2, 3):
            await bus.publish(_wire("A", "x", seq))
            await asyncio.sleep(0.01)

    eager, lingering, _ = await asyncio.gather(
        bus.poll("eager", timeout=5.0), bus.poll("lingering", timeout=5.0, linger=0.2), burst()
    )
    assert [e["seq"] for e in eager["events"]] == [1]
    assert [e["seq"] for e in lingering["events"]] == [1, 2, 3]
    await bus.publish(_wire("A", "x", 4))
    began = asyncio.get_running_loop().time()
    queued = await bus.poll("lingering", timeout=5.0, linger=5.0)
    assert [e["seq"] for e in queued["events"]] == [4]
    assert asyncio.get_running_loop().time() - began < 1.0, "queued events are not held"
    quiet = await bus.poll("lingering", timeout=0.05, linger=5.0)
    assert quiet["events"] == [] and asyncio.get_running_loop().time() - began < 1.0


def test_an_ack_that_cannot_be_encoded_still_tells_how_the_command_ended() -> None:
    channel = Channel(web.WebSocketResponse(), Codec(SUBPROTOCOL_MSGPACK), "ocs", max_events=4)
    ack = Ack("Big\ud800", "count", 7, AckCode.CMD_COMPLETE, "done", 0.0, {"n": 10**30})
    channel.send_ack(3, ack)
    channel.send_ack(4, Ack("C", "count", 8, AckCode.CMD_COMPLETE, "", 0.0, {"n": 1}))
    sent = [msgpack.unpackb(f) for f in channel._control]  # what the write loop would send
    assert [m["id"] for m in sent] == [3, 4] and channel.encode_failures == 1
    plain = sent[0]["ack"]
    assert (plain["component"], plain["code"], plain["seq"], plain["data"]) == (
        "Big\\ud800", int(AckCode.CMD_COMPLETE), 7, None,
    )  # fmt: skip
    assert plain["result"].startswith("done (the ack's data could not be encoded")
    assert sent[1]["ack"]["data"] == {"n": 1}
