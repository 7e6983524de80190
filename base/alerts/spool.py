"""The publishing side of the alert stream: a bounded spool of published CCD batches that the
gateway long-polls (``rpc_poll_alerts``), so the pipeline never waits for a reader.

The AlertPublisher calls :meth:`AlertSpool.publish` once per (visit, detector) after the batch
is archived: a synchronous append that evicts the oldest batches beyond ``max_batches`` or
``max_bytes`` (counted). Readers keep a cursor (the last ``seq`` they have) and ask for what
follows; a reader that fell behind the eviction learns how many batches it missed. Batches
travel as numpy arrays (ids, packet offsets, one packet buffer, the filter columns), which Ray
passes without pickling the packets one by one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from state.clock import tai_now
from state.errors import InvalidInputError
from state.waiting import wait_event

from .batch import AlertBatch
from .filters import decoded_table
from .packet import decode


@dataclass(frozen=True)
class SpooledBatch:
    seq: int
    visit: int
    detector: int
    ids: np.ndarray  # diaSourceId per packet
    offsets: np.ndarray  # int64, n + 1, into data
    data: np.ndarray  # uint8: the framed packets back to back
    table: dict[str, np.ndarray]  # filter columns ("diaSource.snr", ...), one row per packet
    tai: float  # when it was published
    #: The archive's position of the batch (the stream's resume cursor); None: not archived.
    position: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "visit": self.visit, "detector": self.detector, "ids": self.ids,
            "offsets": self.offsets, "data": self.data, "table": self.table, "tai": self.tai,
            "position": self.position,
        }  # fmt: skip


def _as_batch(ids: np.ndarray, packets: AlertBatch | Sequence[bytes | memoryview]) -> AlertBatch:
    if isinstance(packets, AlertBatch):
        return packets
    sizes = np.array([memoryview(p).nbytes for p in packets], dtype=np.int64)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = (
        np.frombuffer(b"".join(packets), dtype=np.uint8) if len(packets) else np.zeros(0, np.uint8)
    )
    return AlertBatch(np.asarray(ids, dtype=np.int64), offsets, data)


class AlertSpool:
    """Published batches, newest last, bounded; ``poll`` is a long poll by cursor."""

    def __init__(self, max_batches: int = 4096, max_bytes: int = 8 << 30) -> None:
        if max_batches < 1 or max_bytes < 1:
            raise InvalidInputError("the alert spool needs room for at least one batch")
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._batches: deque[SpooledBatch] = deque()
        self._bytes = 0
        self._seq = 0
        #: The newest archive position published (or archived before this spool began): a
        #: reader starting at the head has seen every batch up to it.
        self.position = 0
        self.evicted = 0
        self._new = asyncio.Event()

    @property
    def head(self) -> int:
        """The seq of the newest batch (0 before the first)."""
        return self._seq

    def publish(
        self,
        visit: int,
        detector: int,
        ids: np.ndarray,
        packets: AlertBatch | Sequence[bytes | memoryview],
        table: Mapping[str, np.ndarray],
        position: int | None = None,
    ) -> int:
        """Append one CCD's alerts (``position``: the archive's, if archived); never waits.
        Returns the batch's seq."""
        batch = _as_batch(ids, packets)
        n = len(batch.offsets) - 1
        sizes = (len(np.asarray(ids)), len(batch.ids), *(len(v) for v in table.values()))
        if any(size != n for size in sizes):
            raise InvalidInputError(f"batch {visit}/{detector}: ids, packets and table differ")
        self._seq += 1
        spooled = SpooledBatch(
            self._seq, int(visit), int(detector), batch.ids, batch.offsets, batch.data,
            {k: np.asarray(v) for k, v in table.items()}, tai_now(), position,
        )  # fmt: skip
        self._batches.append(spooled)
        if position is not None:
            self.position = max(self.position, int(position))
        self._bytes += int(batch.offsets[-1])
        while len(self._batches) > 1 and (
            len(self._batches) > self.max_batches or self._bytes > self.max_bytes
        ):
            old = self._batches.popleft()
            self._bytes -= int(old.offsets[-1])
            self.evicted += 1
        new, self._new = self._new, asyncio.Event()
        new.set()
        return self._seq

    def after(self, cursor: int, max_batches: int) -> tuple[list[SpooledBatch], int]:
        """Batches with seq > cursor (at most ``max_batches``) and how many were evicted."""
        first = self._batches[0].seq if self._batches else self._seq + 1
        missed = max(0, first - cursor - 1)
        skip = max(0, cursor + 1 - first)
        out = [self._batches[i] for i in range(skip, min(len(self._batches), skip + max_batches))]
        return out, missed

    async def poll(
        self, cursor: int | None, max_batches: int = 64, timeout: float = 10.0
    ) -> dict[str, Any]:
        """What follows ``cursor``, waiting up to ``timeout`` s for something new.

        ``cursor=None`` starts a reader at the head (the live stream), at once, and says the
        archive ``position`` the head is at. The answer:
        ``{"cursor": last seq returned, "missed": batches evicted before they were read,
        "reset": the cursor was ahead of this spool (the publisher restarted) and reading
        restarted from its oldest batch, "batches": [SpooledBatch.to_wire(), ...]}``.
        """
        if cursor is None:
            return {
                "cursor": self._seq, "missed": 0, "reset": False, "batches": [],
                "position": self.position,
            }  # fmt: skip
        if max_batches < 1:
            raise InvalidInputError("max_batches must be at least 1")
        reset = cursor > self._seq
        if reset:
            cursor = 0
        if cursor >= self._seq:
            await wait_event(self._new, timeout)
        batches, missed = self.after(cursor, max_batches)
        last = batches[-1].seq if batches else cursor
        return {
            "cursor": last, "missed": missed, "reset": reset,
            "batches": [b.to_wire() for b in batches],
        }  # fmt: skip


class AlertStreamRpc:
    """Mix into the AlertPublisher component: the gateway's data-plane calls.

    The component sets ``self.spool`` (an :class:`AlertSpool`) and, once its archive is open,
    ``self.alert_archive`` (an :class:`~base.alerts.archive.AlertArchive`).
    """

    spool: AlertSpool
    alert_archive: Any = None
    #: One archive replay read at a time: resumes share one worker thread of this process.
    _replay_reads: asyncio.Semaphore | None = None

    async def rpc_poll_alerts(
        self, cursor: int | None, max_batches: int = 64, timeout: float = 10.0
    ) -> dict[str, Any]:
        return await self.spool.poll(cursor, max_batches, min(float(timeout), 30.0))

    async def rpc_fetch_alert(self, dia_source_id: int) -> bytes | None:
        """The archived framed alert of ``dia_source_id`` (None: not archived)."""
        return await self._archive_open().fetch_packet(int(dia_source_id))

    async def rpc_alert_positions(self, at: int | None = None) -> dict[str, int | None]:
        """The archive's oldest and newest batch position (0 and 0 while it is empty), and
        the visit of the batch at position ``at`` (None: none there)."""
        archive = self._archive_open()
        oldest, newest = await archive.positions()
        visit = None if at is None else await archive.visit_at(int(at))
        return {"oldest": oldest, "newest": newest, "visit": visit}

    async def rpc_replay_alerts(
        self,
        after: int,
        max_batches: int = 16,
        max_bytes: int = 32 << 20,
        table: bool = True,
        visit: int | None = None,
        upto: int | None = None,
    ) -> dict[str, Any]:
        """The archived batches after position ``after``, oldest first, in the wire form of
        :meth:`SpooledBatch.to_wire` (``seq`` 0); ``table``: with their filter columns, made
        from the decoded packets in a worker thread (a full-stream reader needs none); with
        ``visit`` and ``upto``, only that visit's batches at or below ``upto``."""
        archive = self._archive_open()
        if self._replay_reads is None:
            self._replay_reads = asyncio.Semaphore(1)
        async with self._replay_reads:
            return await self._replay(archive, after, max_batches, max_bytes, table, visit, upto)

    @staticmethod
    async def _replay(
        archive: Any,
        after: int,
        max_batches: int,
        max_bytes: int,
        table: bool,
        visit: int | None,
        upto: int | None,
    ) -> dict[str, Any]:
        batches = await archive.batches_after(
            int(after), int(max_batches), int(max_bytes),
            None if visit is None else int(visit), None if upto is None else int(upto),
        )  # fmt: skip
        out = []
        for b in batches:
            columns = (
                await asyncio.to_thread(_table_of, b.packets(), archive.alert_schema)
                if table
                else {}
            )
            out.append(
                SpooledBatch(
                    0, b.visit, b.detector, b.ids, b.offsets, b.data, columns, 0.0, b.position
                ).to_wire()
            )
        return {"batches": out}

    def _archive_open(self) -> Any:
        if self.alert_archive is None:
            raise InvalidInputError("this publisher has no alert archive open")
        return self.alert_archive


def _table_of(packets: Sequence[memoryview], schema: Any) -> dict[str, np.ndarray]:
    return dict(decoded_table([decode(bytes(p), schema) for p in packets], schema))
