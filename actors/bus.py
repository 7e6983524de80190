"""The event bus: fans events and telemetry out to subscribers with bounded queues.

Publishers never wait on subscribers: each subscriber has its own bounded queue; when it is
full the oldest event is dropped and counted, and the receiver sees the gap in the per-topic
sequence numbers. Subscribers pull with a long poll, so a slow or dead subscriber costs the
bus one queue and nothing else; one that has not polled for ``idle_expiry`` seconds is removed.
The bus also keeps the latest event of every (component, topic): the snapshot a new
subscriber starts from. Filters, queues and the follow loop are those of :mod:`state.fanout`;
:func:`follow_bus` is how the gateway and the component actors read the bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayError

from state.errors import InvalidInputError
from state.fanout import Batch, DetectorShare, DropOldestQueue, Follower, TopicFilter

Wire = dict[str, Any]
log = logging.getLogger("dmcs.bus")

#: How long a follower's poll waits on an empty queue: an idle subscriber costs the bus, Ray
#: and itself one call every this many seconds (it was 1 s: ~7 calls a second for the
#: components and the gateway with nothing flowing). Events end the wait at once; a bus that
#: dies fails the waiting call at once; well under the bus's ``idle_expiry``.
POLL_TIMEOUT_S = 5.0


@dataclass(slots=True)
class _Subscriber:
    filter: TopicFilter
    queue: DropOldestQueue[Wire]
    delivered: int = 0
    last_poll: float = field(default_factory=time.monotonic)


class EventBus:
    """In-memory pub/sub; run as a Ray actor by :mod:`actors.launcher`, plain in tests.

    Every method is a coroutine so that, as an async Ray actor, all of them run on the
    actor's one event loop and share its state without locks.
    """

    def __init__(self, idle_expiry: float = 60.0) -> None:
        self.idle_expiry = idle_expiry
        self._subscribers: dict[str, _Subscriber] = {}
        self._latest: dict[tuple[str, str], Wire] = {}
        self._restarts: dict[str, int] = {}
        self._published = 0
        self._refused = 0

    async def publish(self, event: Wire) -> None:
        """Fan ``event`` out; one without a string ``component`` and ``topic`` is refused."""
        try:
            component, topic = event["component"], event["topic"]
        except (KeyError, TypeError) as e:
            raise InvalidInputError(f"an event needs a component and a topic: {e!r}") from e
        if not (isinstance(component, str) and isinstance(topic, str)):
            raise InvalidInputError(f"component and topic must be strings, not {component!r}")
        self._published += 1
        self._latest[(component, topic)] = event
        for sub in self._subscribers.values():
            wanted = sub.filter
            if wanted.wants(component, topic) and (
                (wanted.share is None and not wanted.only_failed)
                or wanted.wants_data(topic, event.get("data"))
            ):
                sub.queue.put(event)

    async def publish_many(self, events: list[Wire]) -> None:
        """Publish in order; an event the bus refuses is counted and logged, the rest go on."""
        for event in events:
            try:
                await self.publish(event)
            except InvalidInputError as e:
                self._refused += 1
                log.warning("event refused: %s", e)

    async def subscribe(
        self,
        subscriber_id: str,
        components: list[str] | None = None,
        topics: list[str] | None = None,
        maxsize: int = 10_000,
        share: list[Any] | None = None,
        only_failed: list[str] | None = None,
    ) -> list[Wire]:
        """Register (or replace) a subscription; return the snapshot it starts from.

        ``share``: a :class:`~state.fanout.DetectorShare` in its wire form, or None;
        ``only_failed`` as in :class:`~state.fanout.TopicFilter`.
        """
        self._expire_idle()
        wanted = TopicFilter.of(
            components, topics, DetectorShare.from_wire(share), only_failed or ()
        )
        sub = _Subscriber(wanted, DropOldestQueue(maxsize))
        self._subscribers[subscriber_id] = sub
        return [event for event in self._latest.values() if sub.filter.wants_wire(event)]

    async def refilter(
        self,
        subscriber_id: str,
        components: list[str] | None = None,
        topics: list[str] | None = None,
        share: list[Any] | None = None,
        only_failed: list[str] | None = None,
    ) -> bool:
        """Change what a subscription wants from now on, keeping its queue; False if unknown."""
        sub = self._subscribers.get(subscriber_id)
        if sub is None:
            return False
        sub.filter = TopicFilter.of(
            components, topics, DetectorShare.from_wire(share), only_failed or ()
        )
        return True

    async def poll(
        self, subscriber_id: str, max_events: int = 1000, timeout: float = 1.0, linger: float = 0.0
    ) -> Wire:
        """Wait up to ``timeout`` s for events; return them with the running drop count.

        ``{"events": [...], "dropped": n, "known": bool}``; ``known`` is False when the
        subscription does not exist (expired, or the bus restarted), so the caller resubscribes.
        ``linger``: once an event arrives in an empty queue, wait that long for those that
        follow it, so that a burst goes out in one answer (for a subscriber that can wait).
        """
        sub = self._subscribers.get(subscriber_id)
        if sub is None:
            return {"events": [], "dropped": 0, "known": False}
        sub.last_poll = time.monotonic()
        if sub.queue.empty() and await sub.queue.wait(timeout) and linger > 0:
            await asyncio.sleep(linger)
        events = sub.queue.take(max_events)
        sub.delivered += len(events)
        sub.last_poll = time.monotonic()
        return {"events": events, "dropped": sub.queue.dropped, "known": True}

    async def unsubscribe(self, subscriber_id: str) -> None:
        self._subscribers.pop(subscriber_id, None)

    async def snapshot(self) -> list[Wire]:
        return list(self._latest.values())

    async def note_restart(self, component: str) -> int:
        """Count a component's restart; the count survives the component's own crash."""
        self._restarts[component] = self._restarts.get(component, 0) + 1
        return self._restarts[component]

    async def stats(self) -> Wire:
        return {
            "published": self._published,
            "refused": self._refused,
            "subscribers": {
                sid: {"queued": len(s.queue), "dropped": s.queue.dropped, "delivered": s.delivered}
                for sid, s in self._subscribers.items()
            },
        }

    def _expire_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_expiry
        for sid in [sid for sid, s in self._subscribers.items() if s.last_poll < cutoff]:
            del self._subscribers[sid]


def follow_bus(
    bus: Any,
    name: str,
    topic_filter: TopicFilter | Callable[[], TopicFilter],
    deliver: Callable[[Wire, bool], Awaitable[None] | None],
    *,
    log: logging.Logger,
    queue_size: int = 10_000,
    max_events: int = 1000,
    on_dropped: Callable[[int], None] | None = None,
    on_failure: Callable[[Wire, Exception], None] | None = None,
    linger: float = 0.0,
    poll_timeout: float = POLL_TIMEOUT_S,
) -> Follower[Wire]:
    """A :class:`~state.fanout.Follower` of the bus actor ``bus``; run it as an owned task.

    ``deliver(wire, snapshot)`` gets each matching event; ``on_dropped`` the bus's running
    count of events it dropped for this subscriber, after every poll; ``on_failure`` each
    event that ``deliver`` raised on (skipped); ``linger`` and ``poll_timeout`` (its
    ``timeout``) as in :meth:`EventBus.poll`. ``topic_filter`` may be a callable that gives
    the filter now (a component's, which follows its configuration): a changed filter is sent
    to the bus before the next poll and applies to events published after that.
    """
    sid = f"{name}-{uuid.uuid4().hex[:8]}"
    current = topic_filter if callable(topic_filter) else lambda: topic_filter
    sent: list[TopicFilter] = [current()]

    def args(wanted: TopicFilter) -> tuple[Any, Any, Any, Any]:
        wire = wanted.to_wire()
        return wire["components"], wire["topics"], wire.get("share"), wire.get("onlyFailed")

    async def subscribe() -> list[Wire]:
        sent[0] = current()
        components, topics, share, only_failed = args(sent[0])
        return await bus.subscribe.remote(sid, components, topics, queue_size, share, only_failed)

    async def poll() -> Batch[Wire]:
        wanted = current()
        if wanted != sent[0]:
            if not await bus.refilter.remote(sid, *args(wanted)):
                return Batch([], known=False)
            sent[0] = wanted
        reply = await bus.poll.remote(sid, max_events, poll_timeout, linger)
        if on_dropped is not None:
            on_dropped(reply["dropped"])
        return Batch(reply["events"], reply["known"])

    return Follower(
        name, subscribe=subscribe, poll=poll, deliver=deliver, transient=(RayError,), log=log,
        on_failure=on_failure,
    )  # fmt: skip
