"""One clock for dmcs: TAI as seconds since the Unix epoch, as ts_salobj's ``current_tai``."""

from __future__ import annotations

import time

#: TAI - UTC since 2017-01-01; no leap second has been announced after it.
TAI_MINUS_UTC = 37.0


def tai_now() -> float:
    return time.time() + TAI_MINUS_UTC


def tai_to_utc(tai: float) -> float:
    return tai - TAI_MINUS_UTC


#: The MJD of 1970-01-01, the epoch of the TAI seconds used throughout.
MJD_UNIX_EPOCH = 40587.0


def tai_mjd(tai: float) -> float:
    """TAI seconds since the Unix epoch → MJD(TAI)."""
    return MJD_UNIX_EPOCH + tai / 86400.0


def mjd_tai(mjd: float) -> float:
    """MJD(TAI) → TAI seconds since the Unix epoch."""
    return (mjd - MJD_UNIX_EPOCH) * 86400.0
