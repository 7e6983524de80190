"""The summit buffer's storage: raw files plus their manifest, with capacity accounting.

A raw is accepted in three durable steps: a ``receiving`` row in the manifest (inserted in
one transaction with the room it takes, so a crash leaves either both or neither), the file
written with fsync past the page cache (``state.direct_io``), then the row marked
``buffered``. Only
after that may the buffer announce it. After a crash :meth:`BufferStore.recover` settles the
rows caught in between: a complete file is kept, a missing or torn one is fetched again from
the camera's staging URL, and only if that fails too is the row dropped (the image was never
announced, so the camera still owns it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np

from state.clock import tai_now
from state.direct_io import write_array_direct
from state.durable import read_hashed, sha256_hex
from state.durable_sqlite import SqliteThread
from state.errors import DmcsError, InvalidInputError, StorageError
from summit.buffer_manifest import Entry, Manifest, Row
from summit.raw_check import path_from_url, read_checked_raw
from summit.step_times import StepTimes

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

log = logging.getLogger("dmcs.SummitBuffer.store")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Usage:
    unsent_count: int
    unsent_bytes: int
    retained_count: int
    retained_bytes: int
    capacity: int

    @property
    def used_bytes(self) -> int:
        return self.unsent_bytes + self.retained_bytes

    @property
    def unsent_fraction(self) -> float:
        return self.unsent_bytes / self.capacity


@dataclass(frozen=True, slots=True)
class Offer:
    """A raw the camera hands over: where it is staged and what it should be."""

    image_name: str
    visit: int
    detector: int
    camera: str
    url: str
    checksum: str
    end_readout_tai: float

    def check(self) -> None:
        if not _NAME.match(self.image_name):
            raise InvalidInputError(f"image name {self.image_name!r} is not a valid obsid")
        if not re.fullmatch(r"[0-9a-f]{64}", self.checksum):
            raise InvalidInputError(
                f"{self.image_name} detector {self.detector}: checksum must be 64 hex digits"
            )
        if self.visit < 0 or self.detector < 0:
            raise InvalidInputError(f"{self.image_name}: negative visit or detector")


class BufferStore:
    """Raw files and their manifest. The manifest's calls run on its own thread, one at a time
    in call order; the event loop reads only :meth:`usage` and :meth:`oldest_unsent_tai`,
    which the writes keep current."""

    def __init__(
        self,
        root: Path,
        capacity: int,
        name: str = "buffer",
        steps: StepTimes | None = None,
        hold_bytes: int = 0,
    ) -> None:
        self.root = root
        self.steps = steps or StepTimes()
        self.capacity = capacity
        self.manifest = Manifest(root / "manifest.sqlite")
        self._thread = SqliteThread(f"{name}-manifest")
        self._closed = False
        #: Reading and hashing a staged raw is CPU work: more at once than there are cores
        #: only delays the first, while the durable writes (disk) overlap freely.
        self.hashing_slots = os.cpu_count() or 1
        self._hashing = asyncio.Semaphore(self.hashing_slots)
        #: Raws written and not yet confirmed, kept in memory as read and verified (up to
        #: ``hold_bytes`` in all) so that their send reads no file: the write went past the
        #: page cache, so mapping the file would read it back from the disk.
        self.hold_bytes = hold_bytes
        self._held: dict[int, np.ndarray] = {}
        self._held_size = 0

    async def _m(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._thread.run(fn, *args, **kwargs)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._m(self.manifest.close)
        self._thread.close()

    def raw_path(self, offer: Offer) -> Path:
        return (
            self.root / "raws" / str(offer.visit) / f"{offer.image_name}_{offer.detector:03d}.fits"
        )

    def usage(self) -> Usage:
        figures = self.manifest.figures
        receiving = figures.of("receiving")
        buffered = figures.of("buffered")
        retained = figures.of("transferred")
        return Usage(
            unsent_count=receiving[0] + buffered[0],
            unsent_bytes=receiving[1] + buffered[1],
            retained_count=retained[0],
            retained_bytes=retained[1],
            capacity=self.capacity,
        )

    def totals(self) -> dict[str, tuple[int, int]]:
        """State → (count, bytes) as of the manifest's last write."""
        return self.manifest.totals()

    def oldest_unsent_tai(self) -> float | None:
        return self.manifest.figures.oldest_unsent_tai

    async def find(self, visit: int, detector: int) -> Entry | None:
        return await self._m(self.manifest.find, visit, detector)

    async def unsent(self) -> list[Entry]:
        """The buffered raws not yet confirmed by the base, in acquisition order."""
        return await self._m(self.manifest.in_state, "buffered")

    async def newest_unsent(self) -> Entry | None:
        return await self._m(self.manifest.newest, "buffered")

    def held(self, entry: Entry) -> np.ndarray | None:
        """``entry``'s bytes as verified when it was taken, if still held in memory."""
        return self._held.get(entry.seq)

    def release(self, entry: Entry) -> None:
        data = self._held.pop(entry.seq, None)
        if data is not None:
            self._held_size -= len(data)

    def _hold(self, seq: int, data: np.ndarray) -> None:
        if seq not in self._held and self._held_size + len(data) <= self.hold_bytes:
            self._held[seq] = data
            self._held_size += len(data)

    async def count_attempt(self, entry: Entry) -> None:
        await self._m(self.manifest.count_attempt, entry.seq)

    async def confirmed(self, entry: Entry, *, keep: bool, attempted: bool = False) -> None:
        """The base holds ``entry``: retained until it expires, or deleted at once.
        ``attempted``: the send that got the confirmation is counted in the same commit."""
        self.release(entry)
        await self._m(
            self.manifest.set_state, entry.seq, "transferred", tai_now(), attempted=attempted
        )
        if not keep:
            await self._m(self.manifest.delete, entry)

    async def expire(self, cutoff: float) -> int:
        """Delete the retained raws confirmed at or before ``cutoff``."""
        return await self._m(self.manifest.expire, cutoff)

    async def accept(self, offer: Offer) -> tuple[Entry, bool]:
        """Take a raw durably; returns its manifest entry and whether it was new.

        The staged raw is read and hashed in one pass, its headers checked (not its pixels: the
        checksum covers them) and written once. Raises ``InvalidInputError`` (bad offer,
        unreadable or malformed raw),
        ``ChecksumMismatchError`` (the staged file is not what the camera said),
        ``BufferFullError`` (no room even after dropping retained raws) or ``StorageError``.
        """
        offer.check()
        existing = await self.find(offer.visit, offer.detector)
        if existing is not None and existing.state != "receiving":
            return _same(existing, offer), False
        source = path_from_url(offer.url)
        mark = self.steps.mark
        async with self._hashing:
            mark(offer.visit, offer.detector, "hash_slot")
            data = await asyncio.to_thread(
                read_checked_raw, source, offer.checksum, offer.visit, offer.detector
            )
        mark(offer.visit, offer.detector, "hashed")
        path = self.raw_path(offer)
        if existing is None:
            row = Row(
                image_name=offer.image_name,
                visit=offer.visit,
                detector=offer.detector,
                camera=offer.camera,
                checksum=offer.checksum,
                byte_size=len(data),
                path=str(path),
                url=offer.url,
                end_readout_tai=offer.end_readout_tai,
                received_tai=tai_now(),
            )
            existing = await self._m(self.manifest.reserve, row, self.capacity)
            if existing.state != "receiving":
                return _same(existing, offer), False
        mark(offer.visit, offer.detector, "reserved")
        try:
            await asyncio.to_thread(write_array_direct, path, data)
        except OSError as e:
            raise StorageError(f"cannot write {offer.image_name} to {path}: {e}") from e
        mark(offer.visit, offer.detector, "written")
        found = await self._m(self._mark_buffered, existing.seq, offer.visit, offer.detector)
        if found is None:
            raise StorageError(f"{offer.image_name} detector {offer.detector} left the manifest")
        self._hold(found.seq, data)
        return found, True

    def _mark_buffered(self, seq: int, visit: int, detector: int) -> Entry | None:
        """Row ``seq`` marked buffered and read back, in one turn of the manifest's thread."""
        self.manifest.set_state(seq, "buffered")
        return self.manifest.find(visit, detector)

    async def repair(self, entry: Entry) -> bool:
        """After the base saw a checksum mismatch: whether ``entry``'s buffered copy was corrupt
        and is now replaced by the camera's staged copy (False: it was intact, the transfer
        corrupted it). Raises ``InvalidInputError`` or ``ChecksumMismatchError`` when it is
        corrupt and the camera's copy cannot replace it, ``StorageError`` when it cannot be
        rewritten."""
        self.release(entry)
        try:
            if await self._intact(entry):
                return False
        except OSError as e:
            log.warning("buffered raw %s unreadable: %s", entry.path, e)
        try:
            await self._restore_from_staging(entry)
        except OSError as e:
            raise StorageError(f"cannot rewrite {entry.image_name} to {entry.path}: {e}") from e
        return True

    async def _intact(self, entry: Entry) -> bool:
        """Whether the buffered copy of ``entry`` has its checksum (absent: it has not)."""
        return await asyncio.to_thread(_hash_or_empty, Path(entry.path)) == entry.checksum

    async def _restore_from_staging(self, entry: Entry) -> None:
        """Rewrite the buffered copy of ``entry`` from the camera's staged one, checked first."""
        data = await asyncio.to_thread(
            read_checked_raw, path_from_url(entry.url), entry.checksum, entry.visit, entry.detector
        )
        await asyncio.to_thread(write_array_direct, Path(entry.path), data)

    async def recover(self) -> list[Entry]:
        """Settle rows left ``receiving`` by a crash; returns those that became buffered."""
        settled = []
        for entry in await self._m(self.manifest.in_state, "receiving"):
            try:
                if not await self._intact(entry):
                    await self._restore_from_staging(entry)
            except (OSError, DmcsError) as e:
                log.warning("dropping interrupted receipt of %s: %s", entry.image_name, e)
                await self._m(self.manifest.remove, entry.seq)
                continue
            await self._m(self.manifest.set_state, entry.seq, "buffered")
            settled.append(entry)
        return settled


def _same(existing: Entry, offer: Offer) -> Entry:
    """A raw already held: the same one again, or a different one refused."""
    if existing.checksum != offer.checksum:
        raise InvalidInputError(
            f"{offer.image_name} detector {offer.detector} is already buffered with "
            f"another checksum ({existing.checksum[:12]}…); refused"
        )
    return existing


def _hash_or_empty(path: Path) -> str:
    try:
        return read_hashed(path)[1]
    except FileNotFoundError:
        return sha256_hex(b"")
