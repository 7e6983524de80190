"""The summit's check of a staged raw: one read that hashes, then the FITS layout from the
headers only; and the base's write that verifies the carried checksum in the same pass."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from base.raw_storage import store_raw
from state.durable import read_hashed, sha256_hex
from state.errors import ChecksumMismatchError, InvalidInputError
from summit.raw_check import read_checked_raw

VISIT, DETECTOR = 7, 3


def raw_bytes(namps: int = 2, primary_data: bool = False, amp_shape: tuple = (40, 30)) -> bytes:
    rng = np.random.default_rng(1)
    primary = fits.PrimaryHDU(np.zeros((2, 2), np.int16) if primary_data else None)
    primary.header.update({"VISIT": VISIT, "DETECTOR": DETECTOR, "NAMPS": 2})
    amps = [fits.ImageHDU(rng.integers(0, 60000, amp_shape).astype(np.int32)) for _ in range(namps)]
    out = io.BytesIO()
    fits.HDUList([primary, *amps]).writeto(out)
    return out.getvalue()


def staged(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / "raw.fits"
    path.write_bytes(data)
    return path, sha256_hex(data)


def test_a_raw_is_read_hashed_and_checked_in_one_pass(tmp_path: Path) -> None:
    data = raw_bytes()
    path, checksum = staged(tmp_path, data)
    got, digest = read_hashed(path)
    assert (got.tobytes(), digest) == (data, checksum)
    assert read_checked_raw(path, checksum, VISIT, DETECTOR).tobytes() == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (raw_bytes()[: -2880 * 2], "truncated: its HDUs need"),
        (raw_bytes() + b" " * 2880, "no END card"),
        (raw_bytes(namps=3), "has 3 amplifier images, its header says NAMPS=2"),
        (raw_bytes(amp_shape=(1200,)), "NAMPS=2"),
        (raw_bytes(primary_data=True), "its primary HDU holds data"),
        (b"SIMPLE  =                    T" + b" " * 2850, "not a readable FITS file"),
    ],
    ids=["truncated", "trailing", "namps", "one-dimensional", "primary-data", "garbage"],
)
def test_a_malformed_raw_with_the_right_checksum_is_refused(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    """The checksum covers the pixels; the headers must still make a raw of this CCD."""
    path, checksum = staged(tmp_path, data)
    with pytest.raises(InvalidInputError, match=reason):
        read_checked_raw(path, checksum, VISIT, DETECTOR)


def test_a_raw_of_another_ccd_or_checksum_is_refused(tmp_path: Path) -> None:
    path, checksum = staged(tmp_path, raw_bytes())
    with pytest.raises(InvalidInputError, match="the camera said 7/4"):
        read_checked_raw(path, checksum, VISIT, 4)
    with pytest.raises(ChecksumMismatchError, match="differs from the camera's"):
        read_checked_raw(path, "0" * 64, VISIT, DETECTOR)


@pytest.mark.parametrize("merged", [False, True])
def test_the_base_verifies_while_it_writes_and_keeps_nothing_corrupt(
    tmp_path: Path, merged: bool
) -> None:
    data = raw_bytes()
    checksum = sha256_hex(data)
    service = fits.Header({"SEEING": 0.7}) if merged else None
    target = tmp_path / "base" / "raw.fits"
    file_checksum, size = store_raw(target, memoryview(data), checksum, service)
    stored = target.read_bytes()
    assert (file_checksum, size) == (sha256_hex(stored), len(stored))
    assert (file_checksum == checksum) is not merged
    assert stored.endswith(data[len(data) - 2 * 2880 :])
    if merged:
        assert fits.getheader(target)["SEEING"] == 0.7
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    again = tmp_path / "base" / "bad.fits"
    with pytest.raises(ChecksumMismatchError, match=f"sent as {checksum[:12]}"):
        store_raw(again, memoryview(bad), checksum, service)
    with pytest.raises(ChecksumMismatchError, match="sent as"):  # a header no longer readable
        store_raw(again, memoryview(b"x" * len(data)), checksum, service)
    assert sorted(p.name for p in target.parent.iterdir()) == ["raw.fits"]
