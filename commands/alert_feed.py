"""The gateway's alert feed: it follows the AlertPublisher's spool and offers each CCD batch
to the fan-out (:class:`AlertStream`), and replays the archive to a resuming subscriber
before it joins the live fan-out. The WebSocket protocol around it: :mod:`commands.alert_stream`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from base.alerts import AlertFanout, compile_filter, predefined
from base.alerts.batch import split_packets
from base.alerts.filters import filter_table
from base.alerts.stream import BatchMark, Subscription
from state.contracts.values import INT64_MAX
from state.errors import ConnectionLostError, DmcsError, InvalidInputError
from state.fanout import Batch, Follower
from state.peers import Peer

log = logging.getLogger("dmcs.gateway.alerts")
DEFAULT_BROKERS = frozenset({"broker"})
#: A replay read: batches and bytes per ``rpc_replay_alerts`` call (a resuming subscriber holds
#: at most one read, or one larger batch, in the gateway while its socket takes it).
REPLAY_BATCHES = 16
REPLAY_BYTES = 8 << 20


@dataclass(frozen=True)
class SubscribeRequest:
    """A ``subscribe`` frame, checked once at the door."""

    full: bool = False
    filter: str | None = None
    expression: str | None = None
    positions: bool = False
    #: Resume after this archive position (None: start live).
    after: int | None = None

    @classmethod
    def parse(cls, frame: Mapping[str, Any]) -> SubscribeRequest:
        full, name, expression = frame.get("full"), frame.get("filter"), frame.get("expression")
        if not (full or isinstance(name, str) or isinstance(expression, str)):
            raise BadFrame("subscribe needs 'filter' (a name), 'expression', or 'full': true")
        positions = frame.get("positions", False)
        if not isinstance(positions, bool):
            raise BadFrame("'positions' must be true or false")
        after = frame.get("from")
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= INT64_MAX
        ):
            raise BadPosition(
                f"'from' must be a non-negative integer archive position, got {after!r}"
            )
        return cls(
            full=bool(full),
            filter=name if not full and isinstance(name, str) else None,
            expression=(
                expression
                if not full and not isinstance(name, str) and isinstance(expression, str)
                else None
            ),
            positions=positions or after is not None,
            after=after,
        )


class AlertStream:
    """Pulls published batches from the publisher and fans them out to the subscribers."""

    def __init__(
        self,
        peer: Peer | None,
        brokers: frozenset[str] = DEFAULT_BROKERS,
        fanout: AlertFanout | None = None,
        poll_timeout: float = 5.0,
        max_batches: int = 64,
    ) -> None:
        self.peer = peer
        self.brokers = brokers
        self.fanout = fanout or AlertFanout(queue_size=1000, max_drops=1000)
        self.poll_timeout = poll_timeout
        self.max_batches = max_batches
        self.cursor: int | None = None
        #: The archive position of the newest batch offered to the fan-out (0: none yet).
        self.position = 0
        self.batches = self.alerts = self.missed = self.replayed = 0
        self._kick: dict[str, asyncio.Event] = {}
        self._names = itertools.count(1)
        self.follower: Follower[Mapping[str, Any]] = Follower(
            "alert stream", subscribe=self._start, poll=self._poll,
            deliver=lambda batch, _snapshot: self.publish(batch),
            transient=(DmcsError,), log=log, backoff=0.2,
        )  # fmt: skip

    @property
    def poll_errors(self) -> int:
        return self.follower.errors

    def publish(self, batch: Mapping[str, Any]) -> None:
        """Offer one spooled batch (``SpooledBatch.to_wire()``) to every subscriber."""
        ids, packets, table = unpack(batch)
        position = batch.get("position")
        self.fanout.publish_visit(
            batch["visit"], ids, packets, table, position, batch.get("detector")
        )
        if position is not None:
            self.position = max(self.position, int(position))
        self.batches += 1
        self.alerts += len(packets)
        for name, sub in self.fanout.subscribers.items():
            if sub.lagging and name in self._kick:
                self._kick.pop(name).set()

    async def pump(self) -> None:
        """Follow the publisher's spool forever; an unreachable one is retried with backoff."""
        if self.peer is not None:
            await self.follower.run()

    async def _start(self) -> list[Mapping[str, Any]]:
        """Start at the spool's head (the live stream) once; after an error, go on from the
        cursor (a restarted publisher's spool says ``reset`` and is read from its start)."""
        if self.cursor is None:
            answer = await self._call_poll(None)
            self.cursor = int(answer["cursor"])
            self.position = max(self.position, int(answer.get("position", 0)))
        return []

    async def _poll(self) -> Batch[Mapping[str, Any]]:
        answer = await self._call_poll(self.cursor)
        self.missed += int(answer.get("missed", 0))
        self.cursor = int(answer["cursor"])
        return Batch(answer["batches"])

    async def _call_poll(self, cursor: int | None) -> dict[str, Any]:
        return await self._call("poll_alerts", cursor, self.max_batches, self.poll_timeout)

    def subscribe(self, identity: str, request: SubscribeRequest) -> Subscription:
        """A subscription from a client's ``subscribe`` frame; clear errors for bad ones.

        A resuming one (``request.after``) is offered no live batch until its replay has
        caught up (:meth:`replay`)."""
        name = f"{identity}#{next(self._names)}"
        if request.full:
            if identity not in self.brokers:
                raise NotPermitted(f"identity {identity!r} is not authorized for the full stream")
            sub = self.fanout.subscribe(name, full_stream=True)
        elif request.filter is not None:
            sub = self.fanout.subscribe(name, predefined(request.filter))
        elif request.expression is not None:
            sub = self.fanout.subscribe(name, compile_filter(request.expression))
        else:
            raise BadFrame("subscribe needs 'filter' (a name), 'expression', or 'full': true")
        sub.marks = request.positions
        sub.replaying = request.after is not None
        self._kick[name] = asyncio.Event()
        return sub

    async def check_position(self, after: int) -> dict[str, Any]:
        """The archive's ``oldest`` and ``newest`` positions and the ``visit`` of the batch at
        ``after``; ``BadPosition`` if ``after`` is ahead of the newest, ``Unavailable``
        without a readable archive."""
        try:
            span = await self._call("alert_positions", after)
        except DmcsError as e:
            raise Unavailable(f"the alert archive is not available to resume from: {e}") from e
        newest = int(span["newest"])
        if after > newest:
            raise BadPosition(
                f"position {after} is ahead of the archive (newest position {newest})"
            )
        return {"oldest": int(span["oldest"]), "newest": newest, "visit": span.get("visit")}

    async def replay(
        self, sub: Subscription, after: int, visit: int | None = None
    ) -> AsyncIterator[Replayed]:
        """The archived batches after ``after`` as ``sub`` gets them, until the archive has
        nothing newer and the pump has offered nothing newer; then ``sub`` joins the live
        fan-out (no await between the last read and the join: no batch is lost or doubled).

        ``visit``: the visit of the batch at ``after``; a filtered subscriber first counts
        what it got of that visit's batches up to ``after`` against its per-visit limit."""
        if visit is not None and sub.per_visit_limit is not None:
            await self._count_visit(sub, visit, after)
        cursor = after
        while True:
            batches = await self._read(cursor, sub.filter is not None)
            if not batches:
                if cursor >= self.position:
                    sub.after, sub.replaying = cursor, False
                    return
                # the pump offered a batch committed after this read began: read again
                await asyncio.sleep(0.02)
                continue
            for batch in batches:
                chosen = self.fanout.choose(sub, batch["visit"], *unpack(batch))
                sent = list(chosen[1]) if chosen else []
                self.replayed += len(sent)
                cursor = int(batch["position"])
                yield Replayed(
                    sent, BatchMark(cursor, batch["visit"], batch["detector"], len(sent))
                )

    async def _count_visit(self, sub: Subscription, visit: int, upto: int) -> None:
        """Count, without sending, what ``sub`` got of ``visit`` up to position ``upto``."""
        cursor = 0
        while (sub.remaining(visit) or 0) > 0:
            batches = await self._read(cursor, True, visit, upto)
            if not batches:
                return
            for batch in batches:
                self.fanout.choose(sub, visit, *unpack(batch))
                cursor = int(batch["position"])

    async def _read(self, after: int, table: bool, *only: int) -> list[Mapping[str, Any]]:
        try:
            answer = await self._call(
                "replay_alerts", after, REPLAY_BATCHES, REPLAY_BYTES, table, *only
            )
        except DmcsError as e:
            raise ReplayFailed(f"the archive replay stopped after {after}: {e}") from e
        return list(answer["batches"])

    async def _call(self, method: str, *args: Any) -> Any:
        if self.peer is None:
            raise ConnectionLostError("no alert publisher in this system")
        return await self.peer.call(method, *args)

    def unsubscribe(self, name: str) -> None:
        self.fanout.unsubscribe(name)
        self._kick.pop(name, None)

    def kicked(self, name: str) -> asyncio.Event:
        return self._kick.get(name) or asyncio.Event()

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.peer is not None, "cursor": self.cursor, "batches": self.batches,
            "alerts": self.alerts, "missedBatches": self.missed, "pollErrors": self.poll_errors,
            "skippedBatches": self.follower.failed, "position": self.position,
            "replayedAlerts": self.replayed,
            "subscribers": [
                {"name": s.name, "full": s.filter is None,
                 "filter": s.filter.expression if s.filter else None, "delivered": s.delivered,
                 "dropped": s.dropped, "queued": s.queue.qsize(), "lagging": s.lagging,
                 "filterFailures": s.failures, "replaying": s.replaying}
                for s in self.fanout.subscribers.values()
            ],
        }  # fmt: skip


@dataclass(frozen=True)
class Replayed:
    packets: list[memoryview]
    mark: BatchMark


def unpack(
    batch: Mapping[str, Any],
) -> tuple[list[int], list[memoryview], dict[str, np.ndarray]]:
    """(ids, packets, filter table) of a batch in wire form."""
    packets = split_packets(batch["data"], batch["offsets"])
    ids = np.asarray(batch["ids"], dtype=np.int64).tolist()
    return ids, packets, filter_table(batch["table"], len(packets))


class BadFrame(InvalidInputError):
    """A frame that is not a valid stream request."""


class NotPermitted(InvalidInputError):
    """The full stream asked for by an identity that is not a broker."""


class BadPosition(InvalidInputError):
    """A resume position that is not a non-negative integer, or is ahead of the archive."""


class Unavailable(InvalidInputError):
    """A resume asked of a system whose alert archive cannot be read now."""


class ReplayFailed(DmcsError):
    """The archive replay of a resuming subscriber could not go on."""
