"""Source-to-object association (DMS-REQ-0285), after Rubin's ap_association.

Candidate pairs come from HEALPix neighbourhoods (nested pixels, so a coarser order is a bit
shift of a finer one and a sorted pixel column stays sorted); each pair gets a cost = the
negative log-likelihood of its separation under the two positions' combined error; a one-to-one
assignment of minimum total cost is solved per connected component of the candidate graph
(almost all components are one source and one object, solved without a solver call; the rest go
to ``scipy.optimize.linear_sum_assignment``). Pure numpy/scipy: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy_healpix import core as hpcore
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Columns are plain dicts of equal-length numpy arrays (Rubin column names).
Columns = dict[str, np.ndarray]

ARCSEC = math.pi / (180.0 * 3600.0)
#: The order of the pixel ids that :func:`candidate_pairs` accepts pre-computed (the APDB's).
PIXEL_ORDER = 16
#: Positional error floor (arcsec) so a source with no or tiny errors still gets a finite cost.
MIN_POS_ERR_ARCSEC = 0.02
_NO_EDGE = 1.0e9


def healpix_pixels(ra_deg: np.ndarray, dec_deg: np.ndarray, order: int) -> np.ndarray:
    """Nested HEALPix indices at ``order`` for positions in degrees."""
    ra = np.asarray(ra_deg, dtype=np.float64)
    if ra.size == 0:
        return np.zeros(0, dtype=np.int64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    pix = hpcore.lonlat_to_healpix(ra * u.deg, dec * u.deg, 1 << order, order="nested")
    return pix.astype(np.int64)


def sky_to_tangent(
    ra_deg: np.ndarray, dec_deg: np.ndarray, ra0_deg: float, dec0_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0); returns (xi, eta) in radians."""
    a, d = np.radians(ra_deg), np.radians(dec_deg)
    a0, d0 = math.radians(ra0_deg), math.radians(dec0_deg)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return xi, eta


def angular_separation_arcsec(
    ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray
) -> np.ndarray:
    """Great-circle separation (haversine, accurate at sub-arcsecond scales), arcsec."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))) / ARCSEC


def _order_for_radius(radius_arcsec: float) -> int:
    """The finest order whose pixels are at least 3x the radius (so 3x3 neighbours cover it)."""
    pixel_arcsec = 58.6 * 3600.0  # order-0 pixel size
    order = math.floor(math.log2(pixel_arcsec / (3.0 * radius_arcsec)))
    return max(0, min(PIXEL_ORDER, order))


def candidate_pairs(
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    obj_ra: np.ndarray,
    obj_dec: np.ndarray,
    radius_arcsec: float,
    obj_pixels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (source, object) pairs closer than ``radius_arcsec``: (src_idx, obj_idx, sep_arcsec).

    ``obj_pixels``, if given, are the objects' nested pixel ids at :data:`PIXEL_ORDER` (the
    APDB's ``pixelId``); sorted ones save the sort.
    """
    empty = np.zeros(0, dtype=np.int64)
    if len(src_ra) == 0 or len(obj_ra) == 0:
        return empty, empty, np.zeros(0)
    if radius_arcsec <= 0:
        raise ValueError(f"association radius must be positive, got {radius_arcsec}")
    order = _order_for_radius(radius_arcsec)
    if obj_pixels is None:
        obj_pixels = healpix_pixels(obj_ra, obj_dec, PIXEL_ORDER)
    keys = np.asarray(obj_pixels, dtype=np.int64) >> (2 * (PIXEL_ORDER - order))
    if np.all(keys[1:] >= keys[:-1]):
        perm = None
        sorted_keys = keys
    else:
        perm = np.argsort(keys, kind="stable")
        sorted_keys = keys[perm]
    src_pix = healpix_pixels(src_ra, src_dec, order)
    nbr = hpcore.neighbours(src_pix, 1 << order, order="nested")  # (8, n), -1 where none
    cells = np.vstack([src_pix[None, :], nbr])  # (9, n)
    src_of_cell = np.broadcast_to(np.arange(len(src_ra)), cells.shape).ravel()
    cells = cells.ravel()
    ok = cells >= 0
    cells, src_of_cell = cells[ok], src_of_cell[ok]
    lo = np.searchsorted(sorted_keys, cells, side="left")
    hi = np.searchsorted(sorted_keys, cells, side="right")
    counts = hi - lo
    if counts.sum() == 0:
        return empty, empty, np.zeros(0)
    i_src = np.repeat(src_of_cell, counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    j_sorted = np.arange(len(i_src)) + starts
    j_obj = j_sorted if perm is None else perm[j_sorted]
    sep = angular_separation_arcsec(src_ra[i_src], src_dec[i_src], obj_ra[j_obj], obj_dec[j_obj])
    keep = sep <= radius_arcsec
    i_src, j_obj, sep = i_src[keep], j_obj[keep].astype(np.int64), sep[keep]
    # Where fewer than 8 pixels meet, a neighbour can repeat: keep each pair once.
    _, first = np.unique(i_src * np.int64(len(obj_ra)) + j_obj, return_index=True)
    return i_src[first], j_obj[first], sep[first]


def positional_cost(
    sep_arcsec: np.ndarray, src_err_arcsec: np.ndarray, obj_err_arcsec: np.ndarray
) -> np.ndarray:
    """Negative log-likelihood of a separation under a circular Gaussian of the combined error."""
    s2 = np.square(np.nan_to_num(src_err_arcsec, nan=MIN_POS_ERR_ARCSEC))
    o2 = np.square(np.nan_to_num(obj_err_arcsec, nan=MIN_POS_ERR_ARCSEC))
    var = np.maximum(s2 + o2, 2 * MIN_POS_ERR_ARCSEC**2)
    return 0.5 * np.square(sep_arcsec) / var + np.log(2 * math.pi * var)


def assign_one_to_one(
    i_src: np.ndarray, j_obj: np.ndarray, cost: np.ndarray, n_src: int, n_obj: int
) -> np.ndarray:
    """Minimum-cost one-to-one assignment on a sparse candidate set.

    Maximises the number of matched pairs first, then minimises the summed cost. Returns the
    matched object index for every source, -1 where none.
    """
    match = np.full(n_src, -1, dtype=np.int64)
    if len(i_src) == 0:
        return match
    # Relabel touched nodes compactly: sources 0..a-1, objects a..a+b-1.
    us, src_local = np.unique(i_src, return_inverse=True)
    uo, obj_local = np.unique(j_obj, return_inverse=True)
    a = len(us)
    graph = coo_matrix(
        (np.ones(len(i_src)), (src_local, obj_local + a)), shape=(a + len(uo), a + len(uo))
    )
    _, label = connected_components(graph, directed=False)
    comp = label[src_local]
    edges_per_comp = np.bincount(comp, minlength=label.max() + 1)
    simple = edges_per_comp[comp] == 1  # one edge => one source, one object: trivially matched
    match[i_src[simple]] = j_obj[simple]
    hard = np.flatnonzero(~simple)
    if len(hard) == 0:
        return match
    order = hard[np.argsort(comp[hard], kind="stable")]
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    for group in np.split(order, bounds):
        rows, r_idx = np.unique(i_src[group], return_inverse=True)
        cols, c_idx = np.unique(j_obj[group], return_inverse=True)
        dense = np.full((len(rows), len(cols)), _NO_EDGE)
        dense[r_idx, c_idx] = cost[group]
        r, c = linear_sum_assignment(dense)
        real = dense[r, c] < _NO_EDGE
        match[rows[r[real]]] = cols[c[real]]
    return match


@dataclass(frozen=True)
class Match:
    """The result of one association pass."""

    index: np.ndarray  # per source: matched row in the catalogue, -1 if none
    separation_arcsec: np.ndarray  # per source: NaN if unmatched

    @property
    def matched(self) -> np.ndarray:
        return self.index >= 0


def match_positions(
    src_ra: np.ndarray,
    src_dec: np.ndarray,
    src_err_arcsec: np.ndarray,
    cat_ra: np.ndarray,
    cat_dec: np.ndarray,
    cat_err_arcsec: np.ndarray,
    radius_arcsec: float,
    cat_pixels: np.ndarray | None = None,
) -> Match:
    """One-to-one likelihood match of sources to a catalogue (DIAObjects or predicted SSObjects)."""
    i, j, sep = candidate_pairs(src_ra, src_dec, cat_ra, cat_dec, radius_arcsec, cat_pixels)
    cost = positional_cost(sep, np.asarray(src_err_arcsec)[i], np.asarray(cat_err_arcsec)[j])
    index = assign_one_to_one(i, j, cost, len(src_ra), len(cat_ra))
    separation = np.full(len(src_ra), np.nan)
    if len(i):
        hit = index[i] == j
        separation[i[hit]] = sep[hit]
    return Match(index, separation)


def position_error_arcsec(cols: Columns) -> np.ndarray:
    """Per-row positional error (arcsec): RMS of raErr and decErr (degrees in the schema)."""
    n = len(cols["ra"])
    ra_err = np.asarray(cols.get("raErr", np.full(n, np.nan)), dtype=np.float64)
    dec_err = np.asarray(cols.get("decErr", np.full(n, np.nan)), dtype=np.float64)
    return np.sqrt(0.5 * (ra_err**2 + dec_err**2)) * 3600.0


#: DiaSource flags that stop an unmatched source from founding a new DIAObject.
QUALITY_FLAGS: tuple[str, ...] = (
    "pixelFlags_saturatedCenter",
    "pixelFlags_nodataCenter",
    "pixelFlags_edge",
    "pixelFlags_offimage",
    "pixelFlags_crCenter",
    "psfFlux_flag",
    "centroid_flag",
)


def passes_quality(
    sources: Columns, min_snr: float = 5.0, min_reliability: float | None = None
) -> np.ndarray:
    """Which sources may found a new DIAObject: |psfFlux/psfFluxErr| >= min_snr, no bad flag."""
    flux = np.asarray(sources["psfFlux"], dtype=np.float64)
    err = np.asarray(sources["psfFluxErr"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.abs(flux / err)
    ok = np.isfinite(snr) & (snr >= min_snr)
    for flag in QUALITY_FLAGS:
        if flag in sources:
            ok &= ~np.asarray(sources[flag], dtype=bool)
    if min_reliability is not None and "reliability" in sources:
        rel = np.asarray(sources["reliability"], dtype=np.float64)
        ok &= ~(rel < min_reliability)  # NaN reliability (no model run) is not a rejection
    return ok
