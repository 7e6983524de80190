"""Decoded CCD inputs shared by the worker processes of a node, as memory-mapped files.

Each preload used to read and decode its calibrations again (a detector's bias, dark, flat
and defects are the same all night), in every worker process its own copy, and to hash each
of them once per process. Here a product is decoded
once into native-endian ``.npy`` files under ``root``, named after the source file's path,
size, modification time and registered checksum; every worker maps them read-only
(``np.load(mmap_mode="r")``): no read, no decode, one copy in the page cache for all.
A product whose checksum one worker verified is marked so for the others.

An entry is written in a temporary directory named after its writer's pid and renamed into
place, so a worker killed mid-write leaves no half-written entry; the next cache user removes
the temporary directories of writers that no longer run. Over ``max_bytes`` the least
recently used entries go (a worker that has one mapped keeps reading it: the file is only
unlinked). Finding them means a look at every entry (a stat of each file), so a process looks
only when what it wrote since its last look passes ``max_bytes / SCAN_EVERY``, or its count
of the cache (the last look's total plus its own writes since) passes ``max_bytes``: a night's
first visit writes ~1,000 entries on ``lsstcam-lite``, and a look after each write made its
preloads quadratic (over half of their time). The cache may so hold more than ``max_bytes`` by what
the other processes wrote since this one's last look (at most ``max_bytes / SCAN_EVERY``
each, as they look too). An entry that cannot be read back is dropped and decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from state.errors import InvalidInputError

#: Default bound of a cache: a ComCam night's calibrations with room to spare (templates are
#: not kept: ``base.ccd_inputs.read_template``).
DEFAULT_MAX_BYTES = 6 * 2**30
TMP_PREFIX = ".tmp-"
VERIFIED = "verified"
META = "meta.json"
#: A process looks at the whole cache for eviction after writing 1/SCAN_EVERY of its bound.
SCAN_EVERY = 16

Arrays = dict[str, np.ndarray]
Meta = dict[str, Any]


def _bytes_in(entry: Path) -> int:
    with os.scandir(entry) as files:
        return sum(f.stat().st_size for f in files)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class InputCache:
    """A directory of decoded products; safe for several processes at once."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        #: Looks at every entry for eviction so far.
        self.scans = 0
        #: The cache's bytes at this process's last look, plus what it wrote since (None: no look).
        self._counted: int | None = None
        self._unscanned = 0
        try:
            (root / VERIFIED).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidInputError(f"input cache {root} cannot be created: {e}") from e
        self.remove_stale()

    @staticmethod
    def _key(path: Path, kind: str, checksum: str | None) -> str:
        try:
            st = path.stat()
        except OSError as e:
            raise InvalidInputError(f"{path} cannot be read: {e}") from e
        what = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{checksum or ''}|{kind}"
        return hashlib.sha1(what.encode()).hexdigest()

    # ------------------------------------------------------------ checksums
    def verified(self, path: Path, checksum: str) -> bool:
        """Whether a process verified ``path`` (as it is now) against ``checksum``."""
        return (self.root / VERIFIED / self._key(path, "sha256", checksum)).exists()

    def mark_verified(self, path: Path, checksum: str) -> None:
        (self.root / VERIFIED / self._key(path, "sha256", checksum)).touch()

    # --------------------------------------------------------------- entries
    def load(
        self, path: Path, kind: str, checksum: str | None, decode: Callable[[], tuple[Arrays, Meta]]
    ) -> tuple[Arrays, Meta]:
        """The decoded ``kind`` of ``path``: mapped from the cache, or ``decode()`` then kept."""
        entry = self.root / self._key(path, kind, checksum)
        found = self._read(entry)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        arrays, meta = decode()
        self._write(entry, arrays, meta)
        found = self._read(entry)
        return found if found is not None else (arrays, meta)

    def _read(self, entry: Path) -> tuple[Arrays, Meta] | None:
        try:
            meta = json.loads((entry / META).read_text())
            arrays = {
                name: np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                for name in meta["arrays"]
            }
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(entry, ignore_errors=True)  # damaged (a crash mid-write): decode again
            return None
        os.utime(entry)
        return arrays, meta["meta"]

    def _write(self, entry: Path, arrays: Arrays, meta: Meta) -> None:
        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        written = 0
        try:
            tmp.mkdir()
            for name, a in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
            (tmp / META).write_text(json.dumps({"arrays": list(arrays), "meta": meta}))
            written = _bytes_in(tmp)
            os.rename(tmp, entry)
        except OSError:
            written = 0  # another process put it there first, or the disk is full
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._wrote(written)

    def _wrote(self, n: int) -> None:
        """Count ``n`` bytes written here; look at the whole cache when due (see the module)."""
        self._unscanned += n
        if self._counted is not None:
            self._counted += n
        due = self._counted is None or self._counted > self.max_bytes
        if due or self._unscanned > self.max_bytes // SCAN_EVERY:
            self.evict()

    # ------------------------------------------------------------- upkeep
    def entries(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and p.name not in (VERIFIED,)
                and not p.name.startswith(TMP_PREFIX)]  # fmt: skip

    def evict(self) -> None:
        """Remove the least recently used entries until the cache fits ``max_bytes``."""
        self.scans += 1
        sized = []
        for e in self.entries():
            try:
                sized.append((e.stat().st_mtime, _bytes_in(e), e))
            except OSError:
                continue  # removed by another process meanwhile
        total = sum(s for _, s, _ in sized)
        for _, size, e in sorted(sized):
            if total <= self.max_bytes:
                break
            shutil.rmtree(e, ignore_errors=True)
            total -= size
        self._counted, self._unscanned = total, 0

    def remove_stale(self) -> list[Path]:
        """Remove the temporary directories of writers that no longer run (killed mid-write)."""
        removed = []
        for p in self.root.glob(f"{TMP_PREFIX}*"):
            try:
                pid = int(p.name[len(TMP_PREFIX) :].split("-")[0])
            except ValueError:
                pid = -1
            if pid != os.getpid() and (pid <= 0 or not _pid_alive(pid)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed
