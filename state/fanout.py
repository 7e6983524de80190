"""The one fan-out path: which events a subscriber wants, a bounded queue that drops the
oldest, and the loop that follows a source (snapshot, long poll, resubscribe).

Every fan-out in dmcs is built from these: the event bus and the component actors' feed
(``actors/``), the gateway's event pump, client channels and alert stream, and the async client
(``commands/``). Stdlib only, so that every layer may import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

from state.events import Event

T = TypeVar("T")

#: A name that stands for every component (or every topic).
ALL = "*"


def _names(values: Iterable[Any] | str | None) -> frozenset[str] | None:
    """The one rule: None, empty, or any list holding ``"*"`` means all (None)."""
    if values is None:
        return None
    if isinstance(values, str):
        values = (values,)
    chosen = frozenset(str(v) for v in values)
    return None if not chosen or ALL in chosen else chosen


@dataclass(frozen=True, slots=True)
class DetectorShare:
    """A subscriber's share of the focal plane: of the events on ``topics`` that name a
    ``detector``, only those of the detectors ``d`` with ``d % count == index``.

    A CCD processor of a pool of ``count`` hears only its own detectors' per-CCD events on
    these topics instead of all 189 of each visit; events without a detector all pass.
    """

    count: int
    index: int
    topics: frozenset[str]

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"share {self.index} of {self.count} does not exist")

    def wants(self, topic: str, data: Mapping[str, Any] | None) -> bool:
        if topic not in self.topics or not isinstance(data, Mapping):
            return True
        detector = data.get("detector")
        if not isinstance(detector, int) or isinstance(detector, bool):
            return True
        return detector % self.count == self.index

    def to_wire(self) -> list[Any]:
        return [self.count, self.index, sorted(self.topics)]

    @classmethod
    def from_wire(cls, wire: Sequence[Any] | None) -> DetectorShare | None:
        if wire is None:
            return None
        count, index, topics = wire
        return cls(int(count), int(index), frozenset(str(t) for t in topics))


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """Which (component, topic) pairs a subscriber wants; ``None`` on a side means all.

    ``share``, if any, narrows the per-CCD events of some topics to a share of the detectors;
    of the topics in ``only_failed``, only events whose ``statusCode`` is not 0 pass (the
    AlertPublisher needs the CCDs that failed, not the 189 that did not).
    """

    components: frozenset[str] | None = None
    topics: frozenset[str] | None = None
    share: DetectorShare | None = None
    only_failed: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        components: Iterable[Any] | str | None = None,
        topics: Iterable[Any] | str | None = None,
        share: DetectorShare | None = None,
        only_failed: Iterable[str] = (),
    ) -> TopicFilter:
        """A filter from what a caller wrote: None, empty or ``"*"`` each mean all."""
        return cls(_names(components), _names(topics), share, frozenset(only_failed))

    def wants_data(self, topic: str, data: Any) -> bool:
        """The share's and ``only_failed``'s verdict on an event's payload."""
        failed_only = topic in self.only_failed and isinstance(data, Mapping)
        if failed_only and data.get("statusCode", 0) == 0:
            return False
        return self.share is None or self.share.wants(topic, data)

    def wants(self, component: str, topic: str) -> bool:
        return (self.components is None or component in self.components) and (
            self.topics is None or topic in self.topics
        )

    def wants_wire(self, wire: dict[str, Any]) -> bool:
        """Whether an event in its wire form (``Event.to_wire()``) passes, share included."""
        topic = wire["topic"]
        return self.wants(wire["component"], topic) and self.wants_data(topic, wire.get("data"))

    def to_wire(self) -> dict[str, Any]:
        """``{"components": [...] | None, "topics": [...] | None}`` (and ``"share"``,
        ``"onlyFailed"`` when set), as sent to a gateway or bus."""
        wire: dict[str, Any] = {
            "components": sorted(self.components) if self.components is not None else None,
            "topics": sorted(self.topics) if self.topics is not None else None,
        }
        if self.share is not None:
            wire["share"] = self.share.to_wire()
        if self.only_failed:
            wire["onlyFailed"] = sorted(self.only_failed)
        return wire


class DropOldestQueue(Generic[T]):
    """A bounded queue a producer never waits on: when full, ``put`` drops the oldest item.

    Drops are counted in ``dropped``; :meth:`new_drops` gives that total once each time it has
    grown, for a consumer that tells its reader about the gap. One consumer at a time.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"a queue holds at least one item, not {maxsize}")
        self._items: deque[T] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self.dropped = 0
        self._reported = 0
        self._ended: BaseException | None = None

    @property
    def maxsize(self) -> int:
        return self._items.maxlen or 0

    def __len__(self) -> int:
        return len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put(self, item: T) -> bool:
        """Append ``item``; False when the oldest item was dropped to make room."""
        kept = len(self._items) < self.maxsize
        if not kept:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()
        return kept

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def peek(self) -> T:
        """The oldest item, left in the queue (for a consumer that removes it once sent)."""
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items[0]

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` items, oldest first, without waiting."""
        count = min(len(self._items), limit)
        return [self._items.popleft() for _ in range(count)]

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until an item is queued (or ``timeout`` s pass); whether one is."""
        if not self._items:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        return bool(self._items)

    async def get(self) -> T:
        """The oldest item, waiting for one; once :meth:`end` was called and the queue is
        drained, its error is raised instead of waiting for items that will never come."""
        while not self._items:
            if self._ended is not None:
                raise self._ended
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def end(self, error: BaseException) -> None:
        """No more items will come: :meth:`get` raises ``error`` once the queue is empty."""
        self._ended = error
        self._ready.set()

    def new_drops(self) -> int | None:
        """The running drop count if it grew since the last call, else None."""
        if self.dropped == self._reported:
            return None
        self._reported = self.dropped
        return self.dropped


@dataclass(slots=True)
class GapCounter:
    """Counts events missing from the per-(component, topic) sequences a receiver has seen."""

    last: dict[tuple[str, str], int] = field(default_factory=dict)
    missing: int = 0

    def see(self, event: Event) -> None:
        key = (event.component, event.topic)
        previous = self.last.get(key)
        if previous is not None and event.seq > previous + 1:
            self.missing += event.seq - previous - 1
        self.last[key] = event.seq


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    """One long poll's answer; ``known`` False: the source forgot the subscription."""

    items: Sequence[T]
    known: bool = True


class Follower(Generic[T]):
    """Follows a source forever: subscribe (its snapshot), then long-poll for what follows.

    When the source forgets the subscription (it restarted, or expired it) the follower
    subscribes again; when it cannot be reached, or subscribing or polling fails otherwise, it
    waits, with exponential backoff, and subscribes again (``transient`` errors are the
    expected ones, logged without a traceback). Each item goes to ``deliver(item, snapshot)``
    on its own: one that makes ``deliver`` raise is logged, counted in ``failed`` (and passed
    to ``on_failure``) and skipped, so that no single item stops the loop.
    """

    def __init__(
        self,
        name: str,
        *,
        subscribe: Callable[[], Awaitable[Sequence[T]]],
        poll: Callable[[], Awaitable[Batch[T]]],
        deliver: Callable[[T, bool], Awaitable[None] | None],
        transient: tuple[type[BaseException], ...],
        log: logging.Logger,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        on_failure: Callable[[T, Exception], None] | None = None,
    ) -> None:
        self.name = name
        self._on_failure = on_failure
        self._subscribe = subscribe
        self._poll = poll
        self._deliver = deliver
        self._transient = transient
        self._log = log
        self._backoff = backoff
        self._max_backoff = max_backoff
        #: True between a successful subscribe and the next error or forgotten subscription.
        self.connected = False
        self.delivered = self.failed = self.errors = self.subscribes = 0

    async def run(self) -> NoReturn:
        backoff = self._backoff
        while True:
            try:
                snapshot = await self._subscribe()
                self.subscribes += 1
                self.connected = True
                await self._deliver_all(snapshot, snapshot=True)
                while True:
                    batch = await self._poll()
                    if not batch.known:
                        self._log.info("%s: the source forgot the subscription", self.name)
                        break
                    backoff = self._backoff
                    await self._deliver_all(batch.items, snapshot=False)
            except Exception as e:  # noqa: BLE001 -- the loop outlives any error, logged
                self.errors += 1
                if isinstance(e, self._transient):
                    level = logging.WARNING if self.connected else logging.DEBUG
                    self._log.log(level, "%s: source unavailable (%s); retrying in %.1f s",
                                  self.name, e, backoff)  # fmt: skip
                else:
                    self._log.exception("%s: following failed; retrying in %.1f s", self.name,
                                        backoff)  # fmt: skip
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            else:
                self.connected = False

    async def _deliver_all(self, items: Sequence[T], *, snapshot: bool) -> None:
        for item in items:
            try:
                result = self._deliver(item, snapshot)
                if inspect.isawaitable(result):
                    await result
            except Exception as e:  # noqa: BLE001 -- one item must not stop the loop
                self.failed += 1
                self._log.warning(
                    "%s: item skipped, delivering it raised %s: %s",
                    self.name, type(e).__name__, e,
                )  # fmt: skip
                if self._on_failure is not None:
                    self._on_failure(item, e)
            else:
                self.delivered += 1
