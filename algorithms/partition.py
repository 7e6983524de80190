"""Sky partitions for association: HEALPix tiles, and which partition a CCD belongs to.

Batch reprocessing associates region by region (one tile of the CCD footprint's centre) and
prompt processing spreads CCDs over its Association partitions by the same tile, so both cut
the sky the same way. Nested tiles are numbered along a space-filling curve: ``tile % n`` deals
neighbouring tiles to different partitions, so one visit's footprint (many tiles) loads all of
them. Pure numpy: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from algorithms.association import healpix_pixels

#: HEALPix order of the association tiles (nside 128, tiles of about 0.46 deg).
REGION_ORDER = 7


def footprint_center(ra_deg: Iterable[float], dec_deg: Iterable[float]) -> tuple[float, float]:
    """The centre of a footprint's vertices (mean unit vector), degrees."""
    ra, dec = (
        np.radians(np.asarray(list(ra_deg), dtype=np.float64)),
        np.radians(np.asarray(list(dec_deg), dtype=np.float64)),
    )
    if ra.size == 0 or ra.shape != dec.shape:
        raise ValueError("a footprint needs as many ra as dec vertices, at least one")
    v = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).sum(axis=1)
    return (
        math.degrees(math.atan2(v[1], v[0])) % 360.0,
        math.degrees(math.atan2(v[2], math.hypot(v[0], v[1]))),
    )


def region_of(
    footprint_ra: Iterable[float], footprint_dec: Iterable[float], order: int = REGION_ORDER
) -> int:
    """The tile of a CCD: the nested HEALPix pixel at ``order`` of its footprint's centre."""
    ra, dec = footprint_center(footprint_ra, footprint_dec)
    return int(healpix_pixels(np.array([ra]), np.array([dec]), order)[0])


def partition_of_tiles(tiles: np.ndarray, partitions: int) -> np.ndarray:
    """The partition (0..partitions-1) owning each tile."""
    if partitions < 1:
        raise ValueError(f"need at least one partition, not {partitions}")
    return np.asarray(tiles, dtype=np.int64) % partitions


def partition_of(
    footprint_ra: Iterable[float],
    footprint_dec: Iterable[float],
    partitions: int,
    order: int = REGION_ORDER,
) -> int:
    """The partition that associates a CCD: the owner of its footprint centre's tile."""
    if partitions == 1:
        return 0
    tile = region_of(footprint_ra, footprint_dec, order)
    return int(partition_of_tiles(np.array([tile]), partitions)[0])
