"""The event bus: fans events and telemetry out to subscribers with bounded queues.

Publishers never wait on subscribers: each subscriber has its own bounded queue; when it is
full the oldest event is dropped and counted, and the receiver sees the gap in the per-topic
sequence numbers. Subscribers pull with a long poll, so a slow or dead subscriber costs the
bus one queue and nothing else; one that has not polled for ``idle_expiry`` seconds is removed.
The bus also keeps the latest event of every (component, topic): the snapshot a new
subscriber starts from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Wire = dict[str, Any]


@dataclass(slots=True)
class _Subscriber:
    components: frozenset[str] | None
    topics: frozenset[str] | None
    queue: deque[Wire]
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    delivered: int = 0
    last_poll: float = field(default_factory=time.monotonic)

    def wants(self, event: Wire) -> bool:
        return (self.components is None or event["component"] in self.components) and (
            self.topics is None or event["topic"] in self.topics
        )


def _as_filter(values: Iterable[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    chosen = frozenset(values)
    return None if not chosen or "*" in chosen else chosen


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

    async def publish(self, event: Wire) -> None:
        self._published += 1
        self._latest[(event["component"], event["topic"])] = event
        for sub in self._subscribers.values():
            if sub.wants(event):
                if len(sub.queue) == sub.queue.maxlen:
                    sub.dropped += 1
                sub.queue.append(event)
                sub.wakeup.set()

    async def publish_many(self, events: list[Wire]) -> None:
        for event in events:
            await self.publish(event)

    async def subscribe(
        self,
        subscriber_id: str,
        components: list[str] | None = None,
        topics: list[str] | None = None,
        maxsize: int = 10_000,
    ) -> list[Wire]:
        """Register (or replace) a subscription; return the snapshot it starts from."""
        self._expire_idle()
        sub = _Subscriber(_as_filter(components), _as_filter(topics), deque(maxlen=maxsize))
        self._subscribers[subscriber_id] = sub
        return [event for event in self._latest.values() if sub.wants(event)]

    async def poll(self, subscriber_id: str, max_events: int = 1000, timeout: float = 1.0) -> Wire:
        """Wait up to ``timeout`` s for events; return them with the running drop count.

        ``{"events": [...], "dropped": n, "known": bool}``; ``known`` is False when the
        subscription does not exist (expired, or the bus restarted), so the caller resubscribes.
        """
        sub = self._subscribers.get(subscriber_id)
        if sub is None:
            return {"events": [], "dropped": 0, "known": False}
        sub.last_poll = time.monotonic()
        if not sub.queue:
            sub.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wakeup.wait(), timeout)
        count = min(len(sub.queue), max_events)
        events = [sub.queue.popleft() for _ in range(count)]
        sub.delivered += count
        sub.last_poll = time.monotonic()
        return {"events": events, "dropped": sub.dropped, "known": True}

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
            "subscribers": {
                sid: {"queued": len(s.queue), "dropped": s.dropped, "delivered": s.delivered}
                for sid, s in self._subscribers.items()
            },
        }

    def _expire_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_expiry
        for sid in [sid for sid, s in self._subscribers.items() if s.last_poll < cutoff]:
            del self._subscribers[sid]
