"""Checks a raw from the camera before the summit buffer accepts it: checksum and FITS layout."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from astropy.io import fits

from state.durable import sha256_hex
from state.errors import ChecksumMismatchError, InvalidInputError


def path_from_url(url: str) -> Path:
    """The local path of a ``file://`` URL (the camera's DAQ staging area)."""
    parsed = urlparse(url)
    if parsed.scheme != "file" or not parsed.path:
        raise InvalidInputError(f"expected a file:// URL, got {url!r}")
    return Path(unquote(parsed.path))


def verify_raw(data: bytes, checksum: str, visit: int, detector: int) -> None:
    """Raise unless ``data`` has ``checksum`` and is a raw of ``visit``/``detector``.

    The structure check reads headers only: a data-less primary HDU naming the visit and
    detector, then ``NAMPS`` two-dimensional amplifier images.
    """
    actual = sha256_hex(data)
    if actual != checksum:
        raise ChecksumMismatchError(
            f"raw of visit {visit} detector {detector}: sha256 {actual[:12]}… "
            f"differs from the camera's {checksum[:12]}…"
        )
    try:
        with fits.open(io.BytesIO(data), lazy_load_hdus=False) as hdul:
            primary = hdul[0].header
            amps = hdul[1:]
            if primary.get("VISIT") != visit or primary.get("DETECTOR") != detector:
                raise InvalidInputError(
                    f"raw header says visit {primary.get('VISIT')} detector "
                    f"{primary.get('DETECTOR')}, the camera said {visit}/{detector}"
                )
            namps = int(primary.get("NAMPS", -1))
            if namps != len(amps) or any(h.header.get("NAXIS") != 2 for h in amps):
                raise InvalidInputError(
                    f"raw of visit {visit} detector {detector} has {len(amps)} amplifier "
                    f"images, its header says NAMPS={namps}"
                )
    except (OSError, ValueError, TypeError) as e:
        raise InvalidInputError(
            f"raw of visit {visit} detector {detector} is not a readable FITS file: {e}"
        ) from e
