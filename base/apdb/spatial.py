"""The APDB's spatial index: HEALPix nested pixels at a fixed order, and padded CCD regions.

Every spatial row carries ``pixelId`` = nested HEALPix index at :data:`ORDER` (≈ 3.2″ pixels).
A region query covers the region with coarser pixels (a cone search), turns each coarse pixel
into the contiguous range of fine nested indices it contains, and reads rows with index range
scans; the exact padded-polygon test is then applied to the few extra rows on the border.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy_healpix import HEALPix, core

from algorithms.association import sky_to_tangent
from algorithms.partition import footprint_center
from state.errors import InvalidInputError

#: HEALPix order of ``pixelId`` (nside = 2**16, pixels ≈ 3.2 arcsec across).
ORDER = 16
NSIDE = 1 << ORDER
#: How many orders above the covering pixels ``Region.pixel_ranges`` runs its cone search.
_SEARCH_UP = 3


def pixel_ids(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Nested HEALPix index at :data:`ORDER` for positions in degrees."""
    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    if ra.size == 0:
        return np.zeros(0, dtype=np.int64)
    return core.lonlat_to_healpix(ra * u.deg, dec * u.deg, NSIDE, order="nested").astype(np.int64)


@dataclass(frozen=True)
class Region:
    """A convex sky polygon (a CCD footprint, vertices in order) padded by ``pad_arcsec``."""

    ra: tuple[float, ...]
    dec: tuple[float, ...]
    pad_arcsec: float = 0.0

    def __post_init__(self) -> None:
        if len(self.ra) != len(self.dec) or len(self.ra) < 3:
            raise InvalidInputError("a region needs at least three (ra, dec) vertices")

    @classmethod
    def box(cls, ra: float, dec: float, half_width_deg: float, pad_arcsec: float = 0.0) -> Region:
        """A square of side ``2 * half_width_deg`` centred on (ra, dec), on the tangent plane."""
        h = math.radians(half_width_deg)
        xi = np.array([-h, h, h, -h])
        eta = np.array([-h, -h, h, h])
        r, d = _tangent_to_sky(xi, eta, ra, dec)
        return cls(tuple(r.tolist()), tuple(d.tolist()), pad_arcsec)

    @property
    def center(self) -> tuple[float, float]:
        return footprint_center(self.ra, self.dec)

    def radius_deg(self) -> float:
        """Radius of a circle around :attr:`center` that holds the padded polygon."""
        ra0, dec0 = self.center
        c = _unit(np.array([ra0]), np.array([dec0]))[0]
        cosd = np.clip(_unit(np.asarray(self.ra), np.asarray(self.dec)) @ c, -1.0, 1.0)
        return float(np.degrees(np.arccos(cosd.min()))) + self.pad_arcsec / 3600.0

    def contains(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        """Boolean mask: inside the polygon grown by ``pad_arcsec`` on every side."""
        ra0, dec0 = self.center
        px, py = sky_to_tangent(np.asarray(self.ra), np.asarray(self.dec), ra0, dec0)
        x, y = sky_to_tangent(np.asarray(ra_deg), np.asarray(dec_deg), ra0, dec0)
        pad = math.radians(self.pad_arcsec / 3600.0)
        # Orient the vertices counter-clockwise, then require every signed edge distance >= -pad.
        area = np.sum(px * np.roll(py, -1) - np.roll(px, -1) * py)
        if area < 0:
            px, py = px[::-1], py[::-1]
        inside = np.ones(np.shape(x), dtype=bool)
        for i in range(len(px)):
            x1, y1, x2, y2 = px[i], py[i], px[(i + 1) % len(px)], py[(i + 1) % len(px)]
            length = math.hypot(x2 - x1, y2 - y1)
            dist = ((x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)) / length
            inside &= dist >= -pad
        return inside

    def pixel_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Half-open ``[lo, hi)`` ranges of ``pixelId`` covering the padded region, merged
        (read-only; the last few regions' are kept).

        Coarse pixels (~1/64 of the radius, at most :data:`ORDER`) that can touch the polygon
        (their centre within the polygon grown by the pixel's radius), so the ranges cover
        little more than the region itself (a full focal plane: 8 % more area; 1/32 read 22 %).
        The candidates are the children of a cone search :data:`_SEARCH_UP` orders coarser: the
        cone search's cost grows with the pixels it returns (about 6 µs each), and every coarse
        pixel that overlaps the cone has a parent that does.
        """
        return _pixel_ranges(self)


@functools.lru_cache(maxsize=16)
def _pixel_ranges(region: Region) -> tuple[np.ndarray, np.ndarray]:
    radius = region.radius_deg()
    coarse = int(np.clip(math.floor(math.log2(58.6 / max(radius / 64, 1e-6))), 0, ORDER))
    ra0, dec0 = region.center
    up = min(_SEARCH_UP, coarse)
    search = HEALPix(nside=1 << (coarse - up), order="nested")
    parents = search.cone_search_lonlat(ra0 * u.deg, dec0 * u.deg, radius * u.deg)
    children = np.arange(1 << (2 * up), dtype=np.int64)
    pix = np.sort(((parents.astype(np.int64)[:, None] << (2 * up)) + children).ravel())
    hp = HEALPix(nside=1 << coarse, order="nested")
    lon, lat = hp.healpix_to_lonlat(pix)
    reach = 1.5 * math.degrees(math.sqrt(math.pi / 3) / (1 << coarse)) * 3600  # √(pixel area)
    grown = Region(region.ra, region.dec, region.pad_arcsec + reach)
    pix = pix[grown.contains(lon.to_value(u.deg), lat.to_value(u.deg))]
    shift = 2 * (ORDER - coarse)
    lo = pix.astype(np.int64) << shift
    hi = (pix.astype(np.int64) + 1) << shift
    keep = np.ones(len(lo), dtype=bool)
    keep[1:] = lo[1:] != hi[:-1]  # a range starting where the previous ends is merged
    starts = np.flatnonzero(keep)
    ends = np.append(starts[1:], len(lo)) - 1
    lo, hi = lo[starts], hi[ends]
    lo.flags.writeable = hi.flags.writeable = False
    return lo, hi


def _unit(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _tangent_to_sky(
    xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    a0, d0 = math.radians(ra0), math.radians(dec0)
    denom = math.cos(d0) - eta * math.sin(d0)
    ra = a0 + np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(d0) + eta * math.cos(d0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)
