"""Alert fan-out to subscribers: the filter + queue core of the alert stream, network-free.

The gateway owns the sockets; this class owns who gets what. A visit arrives as one or more
batches (one per CCD) of serialized packets plus a columnar filter table; every filtered
subscriber's filter runs over a whole batch as one vectorised mask, and the first
``per_visit_limit`` (20, DMS-REQ-0343) passing alerts of each visit, over all its batches, are
offered to its queue; a subscriber that has its 20 for a visit is not filtered again for that
visit. Full-stream subscribers (authorised brokers) get everything. Queues are bounded and
never wait (:class:`~state.fanout.DropOldestQueue`): when one is full the oldest alert is
dropped and counted, and a subscriber whose drops pass ``max_drops`` is marked ``lagging`` so
the gateway can disconnect it. Each delivered message carries a per-subscriber sequence
number, so a reader sees its gaps. A subscriber whose filter fails on a batch loses that batch
alone (counted in ``failures``, logged); the others still get it.

A batch the archive holds carries its archive ``position``. A subscriber that asked for
positions (``marks``) gets a :class:`BatchMark` queued after each such batch's alerts (also
when none of them passed its filter): its resume cursor. A subscriber's ``after`` skips the
batches at or below a position (those an archive replay already sent it); one ``replaying``
is offered nothing.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from state.errors import InvalidInputError
from state.fanout import DropOldestQueue

from .filters import AlertFilter

log = logging.getLogger("dmcs.alerts.stream")

#: Visits whose per-subscriber counts are kept (visits interleave only at their boundaries).
_VISITS_REMEMBERED = 16


@dataclass(frozen=True)
class StreamMessage:
    seq: int  # per-subscriber, consecutive over offered messages (dropped ones leave gaps)
    visit: int
    dia_source_id: int
    packet: bytes | memoryview  # Confluent-framed Avro


@dataclass(frozen=True)
class BatchMark:
    """Queued after the alerts of one archived batch: all of them (that pass) were offered."""

    position: int
    visit: int
    detector: int | None
    count: int  # the batch's alerts offered to this subscriber


@dataclass
class Subscription:
    name: str
    filter: AlertFilter | None  # None = full stream
    queue: DropOldestQueue[StreamMessage | BatchMark]
    per_visit_limit: int | None
    max_drops: int
    offered: int = 0
    #: Batches this subscriber lost because filtering them raised.
    failures: int = 0
    seq: int = 0
    lagging: bool = False
    last_visit_matches: int = 0
    filter_seconds: float = 0.0
    visit_counts: OrderedDict[int, int] = field(default_factory=OrderedDict)
    #: Queue a :class:`BatchMark` after each archived batch.
    marks: bool = False
    #: Batches at or below this archive position are not offered (a replay sent them).
    after: int = 0
    #: Offered nothing while an archive replay serves it.
    replaying: bool = False

    @property
    def dropped(self) -> int:
        """Alerts pushed out of the queue before the subscriber read them."""
        return self.queue.dropped

    @property
    def delivered(self) -> int:
        """Alerts sent, or queued to be sent."""
        return self.offered - self.queue.dropped

    def remaining(self, visit: int) -> int | None:
        """How many more alerts of ``visit`` this subscriber may get (None: no limit)."""
        if self.per_visit_limit is None:
            return None
        return self.per_visit_limit - self.visit_counts.get(visit, 0)

    def count(self, visit: int, n: int) -> None:
        self.visit_counts[visit] = self.visit_counts.get(visit, 0) + n
        self.visit_counts.move_to_end(visit)
        while len(self.visit_counts) > _VISITS_REMEMBERED:
            self.visit_counts.popitem(last=False)

    def offer(
        self, msg_visit: int, ids: Sequence[int], packets: Sequence[bytes | memoryview]
    ) -> None:
        for sid, packet in zip(ids, packets, strict=True):
            self.seq += 1
            self.queue.put(StreamMessage(self.seq, msg_visit, sid, packet))
        self.offered += len(ids)
        if self.queue.dropped > self.max_drops:
            self.lagging = True

    def mark(self, position: int, visit: int, detector: int | None, count: int) -> None:
        self.queue.put(BatchMark(position, visit, detector, count))


@dataclass(frozen=True)
class PublishStats:
    visit: int
    n_alerts: int
    seconds: float
    delivered: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


class AlertFanout:
    """Filter and distribute each visit's alerts to bounded subscriber queues."""

    def __init__(
        self,
        queue_size: int = 1000,
        per_visit_limit: int = 20,
        max_drops: int = 1000,
        full_stream_queue_size: int = 200_000,
    ) -> None:
        if queue_size < 1 or per_visit_limit < 1:
            raise InvalidInputError("queue_size and per_visit_limit must be positive")
        self.queue_size = queue_size
        self.per_visit_limit = per_visit_limit
        self.max_drops = max_drops
        self.full_stream_queue_size = full_stream_queue_size
        self._subs: dict[str, Subscription] = {}

    def subscribe(
        self, name: str, alert_filter: AlertFilter | None = None, full_stream: bool = False
    ) -> Subscription:
        """Add a subscriber: a filtered one (``alert_filter``) or the full stream."""
        if name in self._subs:
            raise InvalidInputError(f"subscriber {name!r} already exists")
        if (alert_filter is None) != full_stream:
            raise InvalidInputError("give a filter, or full_stream=True, not both or neither")
        sub = Subscription(
            name=name,
            filter=alert_filter,
            queue=DropOldestQueue(self.full_stream_queue_size if full_stream else self.queue_size),
            per_visit_limit=None if full_stream else self.per_visit_limit,
            max_drops=self.max_drops,
        )
        self._subs[name] = sub
        return sub

    def unsubscribe(self, name: str) -> None:
        self._subs.pop(name, None)

    @property
    def subscribers(self) -> dict[str, Subscription]:
        return dict(self._subs)

    def publish_visit(
        self,
        visit: int,
        dia_source_ids: np.ndarray,
        packets: Sequence[bytes | memoryview],
        table: Mapping[str, np.ndarray],
        position: int | None = None,
        detector: int | None = None,
    ) -> PublishStats:
        """Offer one batch (a CCD, or a whole visit) of ``visit``'s alerts; returns at once
        (never waits for a subscriber). ``position``: the batch's archive position, if any."""
        n = len(packets)
        if len(dia_source_ids) != n:
            raise InvalidInputError(f"{len(dia_source_ids)} ids for {n} packets")
        ids = np.asarray(dia_source_ids, dtype=np.int64).tolist()
        t0 = time.perf_counter()
        for sub in list(self._subs.values()):
            if sub.lagging or sub.replaying or (position is not None and position <= sub.after):
                continue
            chosen = self.choose(sub, visit, ids, packets, table)
            if chosen is not None:
                sub.offer(visit, *chosen)
            if sub.marks and position is not None:
                sub.mark(position, visit, detector, len(chosen[0]) if chosen else 0)
        return PublishStats(
            visit,
            n,
            time.perf_counter() - t0,
            {s.name: s.delivered for s in self._subs.values()},
            {s.name: s.dropped for s in self._subs.values()},
        )

    @staticmethod
    def choose(
        sub: Subscription,
        visit: int,
        ids: Sequence[int],
        packets: Sequence[bytes | memoryview],
        table: Mapping[str, np.ndarray],
    ) -> tuple[Sequence[int], Sequence[bytes | memoryview]] | None:
        """The alerts of one batch ``sub`` gets (counted against its per-visit limit); None
        when its filter raised on the batch (counted in ``failures``, logged)."""
        if sub.filter is None:
            return ids, packets
        room = sub.remaining(visit)
        if room is not None and room <= 0:
            return [], []
        t = time.perf_counter()
        try:
            hits = np.flatnonzero(sub.filter.mask(table, len(packets)))[:room]
        except Exception as e:  # noqa: BLE001 -- one subscriber's filter, one batch
            sub.failures += 1
            log.warning(
                "alert subscriber %s lost a batch of visit %d: its filter %r raised %s: %s",
                sub.name, visit, sub.filter.expression, type(e).__name__, e,
            )  # fmt: skip
            return None
        sub.filter_seconds += time.perf_counter() - t
        sub.last_visit_matches = len(hits)
        sub.count(visit, len(hits))
        return [ids[i] for i in hits], [packets[i] for i in hits]
