"""Durable writes past the page cache: the bytes on disk are exactly the source's, a refused
write leaves nothing, and a file system without O_DIRECT still gets a durable write."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import state.direct_io
from state.direct_io import ALIGN, aligned_empty, write_array_direct, write_chunks_direct


def _bytes(size: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


@pytest.mark.parametrize("size", [1, 2880 * 3, ALIGN, 3 * ALIGN + 5, (9 << 20) + 2880])
def test_any_length_is_written_exactly_from_aligned_or_unaligned_memory(
    tmp_path: Path, size: int
) -> None:
    source = _bytes(size)
    held = aligned_empty(size)
    held[:] = source
    assert held.ctypes.data % ALIGN == 0
    assert write_array_direct(tmp_path / "a.fits", held) == size
    unaligned = np.empty(size + 1, np.uint8)[1:]
    unaligned[:] = source
    assert write_array_direct(tmp_path / "b.fits", unaligned) == size
    parts = [memoryview(source)[i : i + 1000] for i in range(0, size, 1000)]
    assert write_chunks_direct(tmp_path / "c.fits", parts) == size
    for name in ("a", "b", "c"):
        assert (tmp_path / f"{name}.fits").read_bytes() == source.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits", "b.fits", "c.fits"]


def test_a_write_refused_before_its_commit_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "raw.fits"
    target.write_bytes(b"the old file")

    def refuse() -> None:
        raise ValueError("checksum differs")

    with pytest.raises(ValueError, match="checksum differs"):
        write_chunks_direct(target, [memoryview(_bytes(5 * ALIGN + 3))], refuse)
    assert target.read_bytes() == b"the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["raw.fits"]


def test_without_o_direct_the_write_is_buffered_and_still_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = os.open

    def no_direct(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return opened(path, flags, *args)

    monkeypatch.setattr(state.direct_io.os, "open", no_direct)
    source = _bytes(3 * ALIGN + 11)
    assert write_chunks_direct(tmp_path / "raw.fits", [memoryview(source)]) == len(source)
    assert (tmp_path / "raw.fits").read_bytes() == source.tobytes()
