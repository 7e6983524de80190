"""The summit buffer's storage: raw files plus their manifest, with capacity accounting.

A raw is accepted in three durable steps: a ``receiving`` row in the manifest, the file
written with fsync (``state.durable.write_durably``), then the row marked ``buffered``. Only
after that may the buffer announce it. After a crash :meth:`BufferStore.recover` settles the
rows caught in between: a complete file is kept, a missing or torn one is fetched again from
the camera's staging URL, and only if that fails too is the row dropped (the image was never
announced, so the camera still owns it).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from state.clock import tai_now
from state.durable import sha256_hex, write_durably
from state.errors import BufferFullError, DmcsError, InvalidInputError, StorageError
from summit.buffer_manifest import Entry, Manifest
from summit.raw_check import path_from_url, verify_raw

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

log = logging.getLogger("dmcs.SummitBuffer.store")


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
    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.manifest = Manifest(root / "manifest.sqlite")

    def close(self) -> None:
        self.manifest.close()

    def raw_path(self, offer: Offer) -> Path:
        return (
            self.root / "raws" / str(offer.visit) / f"{offer.image_name}_{offer.detector:03d}.fits"
        )

    def usage(self) -> Usage:
        totals = self.manifest.totals()
        receiving = totals.get("receiving", (0, 0))
        buffered = totals.get("buffered", (0, 0))
        retained = totals.get("transferred", (0, 0))
        return Usage(
            unsent_count=receiving[0] + buffered[0],
            unsent_bytes=receiving[1] + buffered[1],
            retained_count=retained[0],
            retained_bytes=retained[1],
            capacity=self.capacity,
        )

    async def accept(self, offer: Offer) -> tuple[Entry, bool]:
        """Take a raw durably; returns its manifest entry and whether it was new.

        Raises ``InvalidInputError`` (bad offer, unreadable or malformed raw),
        ``ChecksumMismatchError`` (the staged file is not what the camera said),
        ``BufferFullError`` (no room even after dropping retained raws) or ``StorageError``.
        """
        offer.check()
        existing = self.manifest.find(offer.visit, offer.detector)
        if existing is not None and existing.state != "receiving":
            if existing.checksum != offer.checksum:
                raise InvalidInputError(
                    f"{offer.image_name} detector {offer.detector} is already buffered with "
                    f"another checksum ({existing.checksum[:12]}…); refused"
                )
            return existing, False
        source = path_from_url(offer.url)
        try:
            data = await asyncio.to_thread(source.read_bytes)
        except OSError as e:
            raise InvalidInputError(f"cannot read the staged raw {source}: {e}") from e
        await asyncio.to_thread(verify_raw, data, offer.checksum, offer.visit, offer.detector)
        path = self.raw_path(offer)
        if existing is None:
            self._make_room(offer, len(data))
            # No await since the check: the new row itself holds the room it was given.
            existing = self.manifest.begin(
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
        try:
            await asyncio.to_thread(write_durably, path, data)
        except OSError as e:
            raise StorageError(f"cannot write {offer.image_name} to {path}: {e}") from e
        self.manifest.set_state(existing.seq, "buffered")
        found = self.manifest.find(offer.visit, offer.detector)
        assert found is not None
        return found, True

    def _make_room(self, offer: Offer, size: int) -> None:
        """Ensure room for ``size`` bytes, dropping retained raws oldest first if needed."""
        usage = self.usage()
        if usage.used_bytes + size > self.capacity:
            for entry in self.manifest.retained():
                self.delete(entry)
                usage = self.usage()
                if usage.used_bytes + size <= self.capacity:
                    break
        if usage.used_bytes + size > self.capacity:
            raise BufferFullError(
                f"summit buffer full: {usage.used_bytes:,} of {self.capacity:,} bytes used "
                f"by {usage.unsent_count} unsent raws; {offer.image_name} detector "
                f"{offer.detector} ({size:,} bytes) refused"
            )

    def delete(self, entry: Entry) -> None:
        Path(entry.path).unlink(missing_ok=True)
        self.manifest.set_state(entry.seq, "deleted")

    async def recover(self) -> list[Entry]:
        """Settle rows left ``receiving`` by a crash; returns those that became buffered."""
        settled = []
        for entry in self.manifest.in_state("receiving"):
            path = Path(entry.path)
            try:
                data = await asyncio.to_thread(_read_or_empty, path)
                if sha256_hex(data) != entry.checksum:
                    data = await asyncio.to_thread(path_from_url(entry.url).read_bytes)
                    verify_raw(data, entry.checksum, entry.visit, entry.detector)
                    await asyncio.to_thread(write_durably, path, data)
            except (OSError, DmcsError) as e:
                log.warning("dropping interrupted receipt of %s: %s", entry.image_name, e)
                self.manifest.remove(entry.seq)
                continue
            self.manifest.set_state(entry.seq, "buffered")
            settled.append(entry)
        return settled


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
