"""Deterministic FITS writing: the same content always gives the same bytes.

Two sources of time-dependent bytes are removed: astropy's timestamp in the CHECKSUM
comment, and the modification time that ``gzip.compress`` writes into each gzip member.
The latter reaches the file through tile compression: a float tile that cannot be quantized
(RICE_1 with ``quantize_level``) is stored losslessly in ``GZIP_COMPRESSED_DATA``.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from astropy.io import fits
from astropy.io.fits.hdu.compressed import _codecs


def _pin_gzip_mtime() -> None:
    """Make astropy's GZIP_1/GZIP_2 codecs write ``mtime=0`` instead of the current time."""
    if getattr(_codecs.gzip_compress, "dmcs_pinned", False):
        return
    pinned = functools.partial(gzip.compress, mtime=0)
    pinned.dmcs_pinned = True  # type: ignore[attr-defined]
    _codecs.gzip_compress = pinned  # type: ignore[attr-defined]


_pin_gzip_mtime()


def write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write ``hdul`` with per-HDU checksums; the same content always gives the same bytes."""
    for hdu in hdul:
        hdu.add_checksum(when="dmcs simulator")
    hdul.writeto(path, overwrite=True)
