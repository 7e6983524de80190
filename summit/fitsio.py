"""Deterministic FITS writing: CHECKSUM/DATASUM without astropy's timestamp in the comment."""

from __future__ import annotations

from pathlib import Path

from astropy.io import fits


def write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write ``hdul`` with per-HDU checksums; the same content always gives the same bytes."""
    for hdu in hdul:
        hdu.add_checksum(when="dmcs simulator")
    hdul.writeto(path, overwrite=True)
