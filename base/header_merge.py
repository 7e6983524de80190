"""Merging the header service's exposure header into a raw's primary header.

The merge rule (docs/data_path.md):

* the camera wins for every card it wrote — identity (OBSID, VISIT, DETECTOR...), geometry,
  the nominal WCS, the commanded pointing (RA, DEC, ROTPA) and all its timing cards
  (DATE-*, MJD-*, EXPTIME, DARKTIME, TIMESYS): they describe the pixels in this file;
* the header service wins for the cards it *measures* from telemetry (:data:`SERVICE_WINS`:
  seeing, transparency, weather, dome, the telescope's alt/az/airmass, site);
* every other header-service card the raw lacks is added (SHUTTIME, ROTSKYPA, FILTBAND...);
* ``HDRSRC`` records which sources went in.

Only the data-less primary HDU is rewritten; the amplifier HDUs are copied byte for byte.
"""

from __future__ import annotations

import io

from astropy.io import fits

from state.errors import InvalidInputError
from state.fits_blocks import BLOCK, CARD

SERVICE_WINS: frozenset[str] = frozenset(
    {
        "SEEING",
        "TRANSPAR",
        "AIRTEMP",
        "PRESSURE",
        "HUMIDITY",
        "WINDSPD",
        "WINDDIR",
        "DOMEAZ",
        "ALTSTART",
        "AZSTART",
        "AMSTART",
        "OBS-ELEV",
        "OBSERVAT",
    }
)
_STRUCTURAL = frozenset(
    {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", ""}
)


def split_primary(data: bytes) -> tuple[fits.Header, int]:
    """The primary header of a FITS file and the offset where the next HDU starts."""
    for end in range(BLOCK, len(data) + 1, BLOCK):
        block = data[end - BLOCK : end]
        for i in range(0, BLOCK, CARD):
            if block[i : i + CARD].rstrip() == b"END":
                try:
                    header = fits.Header.fromstring(data[:end].decode("ascii"))
                except (UnicodeDecodeError, ValueError) as e:
                    raise InvalidInputError(f"unreadable primary header: {e}") from e
                if int(header.get("NAXIS", 0)) != 0:
                    raise InvalidInputError("a raw's primary HDU must hold no data")
                return header, end
    raise InvalidInputError("no END card: not a FITS file")


def merge_headers(raw: fits.Header, service: fits.Header) -> fits.Header:
    merged = raw.copy()
    for card in service.cards:
        key = card.keyword
        if key in _STRUCTURAL:
            continue
        if key in SERVICE_WINS or key not in merged:
            merged[key] = (card.value, card.comment)
    merged["HDRSRC"] = ("camera+headerService", "sources of this header")
    return merged


def merged_parts(data: bytes, service: fits.Header) -> tuple[bytes, memoryview]:
    """``data`` with its primary header merged with ``service``, as (new primary, the rest).

    The new primary HDU gets a fresh CHECKSUM; the amplifier HDUs are a view of ``data``.
    """
    raw, offset = split_primary(data)
    return merged_primary(raw, service), memoryview(data)[offset:]


def merged_primary(raw: fits.Header, service: fits.Header) -> bytes:
    """The data-less primary HDU of ``raw`` merged with ``service``, with a fresh CHECKSUM."""
    hdu = fits.PrimaryHDU(header=merge_headers(raw, service))
    hdu.add_checksum(when="dmcs ingest")
    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue()


def merged_raw(data: bytes, service: fits.Header) -> bytes:
    """:func:`merged_parts` joined into one file image."""
    head, rest = merged_parts(data, service)
    return head + rest


def dimensions(header: fits.Header) -> tuple[int, int, int]:
    """(nx, ny, amplifiers) of the assembled CCD from ``DETSIZE`` and ``NAMPS``."""
    try:
        xs, ys = str(header["DETSIZE"]).strip("[]").split(",")
        nx = int(xs.split(":")[1])
        ny = int(ys.split(":")[1])
        return nx, ny, int(header["NAMPS"])
    except (KeyError, ValueError, IndexError) as e:
        raise InvalidInputError(f"raw header lacks a valid DETSIZE/NAMPS: {e}") from e
