"""A deterministic sky: stars, variable stars, supernova-like transients and moving objects.

The sky is cut into cells (declination bands split in right ascension); the objects of a cell
are drawn from ``numpy.random.default_rng([seed, kind, band, cell])``, so any query, in any
order, on any machine, sees the same objects. Object ids encode kind and cell and are stable.

Populations (r-band AB magnitudes; other bands by colour):

* stars, ``dN/dm ~ 10^(0.25 m)`` over 12 < r < 25.5, surface density ``3500 + 50000
  exp(-|b|/8 deg)`` per deg^2 (b: galactic latitude), colours along the stellar locus;
* 2 % of stars vary (RR-Lyrae-like sawtooth, periods 0.2-5 d, 0.1-1 mag);
* transients with a fireball rise ``(1 - exp(-x/tau_r))^2 exp(-x/tau_f)`` after explosion,
  40 % of them exploding within the night, a third of them fast (tau_r < 0.6 d);
* moving objects near the ecliptic: main belt (0.12-0.35 deg/day, along the ecliptic,
  retrograde) and near-Earth objects (0.5-10 deg/day, any direction), great-circle motion.

The densities are :class:`SkyParams` defaults; a camera's ``[sky]`` section overrides them
(:meth:`SkyParams.for_camera`), e.g. the toy ``mini`` camera looks at a crowded field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from algorithms.render_wcs import angular_separation, offset_by
from config.cameras import SkyConfig

BANDS = ("u", "g", "r", "i", "z", "y")
STAR, VARIABLE, TRANSIENT, MOVING = 1, 2, 3, 4
KIND_NAMES = {STAR: "star", VARIABLE: "variable", TRANSIENT: "transient", MOVING: "moving"}
AB_NJY_ZERO = 31.4  # m_AB = 31.4 - 2.5 log10(f / nJy)

_GAL = np.array(  # ICRS -> galactic rotation (Hipparcos)
    [
        [-0.0548755604, -0.8734370902, -0.4838350155],
        [0.4941094279, -0.4448296300, 0.7469822445],
        [-0.8676661490, -0.1980763734, 0.4559837762],
    ]
)
_EPS = np.radians(23.4392911)


@dataclass(frozen=True)
class SkyParams:
    """Population knobs; the defaults are a typical high-latitude survey field."""

    star_cell_deg: float = 0.2
    mover_cell_deg: float = 1.0
    star_density_pole: float = 3500.0
    star_density_plane: float = 50000.0
    star_mag_range: tuple[float, float] = (12.0, 25.5)
    variable_fraction: float = 0.02
    transient_density: float = 4.0  # per deg^2 active around the night
    mover_density_floor: float = 2.0
    mover_density_ecliptic: float = 100.0
    neo_fraction: float = 0.1

    @classmethod
    def for_camera(cls, sky: SkyConfig) -> SkyParams:
        """The defaults with a camera's ``[sky]`` overrides applied."""
        return replace(cls(), **sky.overrides())


@dataclass(frozen=True)
class Catalog:
    """Objects of the sky model; every column is a numpy array of one length."""

    id: NDArray[np.int64]
    kind: NDArray[np.int8]
    ra: NDArray[np.float64]  # reference position (movers: at t_ref)
    dec: NDArray[np.float64]
    mag: NDArray[np.float64]  # (n, 6): mean (stars, movers) or peak (transients), ugrizy
    period: NDArray[np.float64]
    amplitude: NDArray[np.float64]
    t0: NDArray[np.float64]  # variable epoch of maximum light / transient explosion MJD
    tau_rise: NDArray[np.float64]
    tau_fall: NDArray[np.float64]
    rate: NDArray[np.float64]  # deg/day
    pa: NDArray[np.float64]  # direction of motion, deg east of north
    t_ref: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.id)

    def select(self, mask: NDArray[np.bool_] | NDArray[np.intp]) -> Catalog:
        return Catalog(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Catalog]) -> Catalog:
        if not parts:
            return _empty()
        return Catalog(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Catalog)}
        )


def _empty() -> Catalog:
    z = np.zeros(0)
    return Catalog(
        np.zeros(0, np.int64), np.zeros(0, np.int8), z, z, np.zeros((0, 6)), z, z, z, z, z, z, z, z
    )


def _unit(ra: NDArray[np.float64], dec: NDArray[np.float64]) -> NDArray[np.float64]:
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def galactic_latitude(ra: NDArray[np.float64], dec: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.degrees(np.arcsin(np.clip((_GAL @ _unit(ra, dec))[2], -1, 1)))


def ecliptic_to_equatorial(
    lon: NDArray[np.float64], lat: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x, y, z = _unit(lon, lat)
    ye = y * np.cos(_EPS) - z * np.sin(_EPS)
    ze = y * np.sin(_EPS) + z * np.cos(_EPS)
    return np.degrees(np.arctan2(ye, x)) % 360.0, np.degrees(np.arcsin(np.clip(ze, -1, 1)))


def ecliptic_latitude(ra: NDArray[np.float64], dec: NDArray[np.float64]) -> NDArray[np.float64]:
    _x, y, z = _unit(ra, dec)
    return np.degrees(np.arcsin(np.clip(-y * np.sin(_EPS) + z * np.cos(_EPS), -1, 1)))


def position_angle(ra1: NDArray, dec1: NDArray, ra2: NDArray, dec2: NDArray) -> NDArray:
    """Position angle (deg E of N) of point 2 seen from point 1."""
    a1, d1, a2, d2 = (np.radians(v) for v in (ra1, dec1, ra2, dec2))
    y = np.sin(a2 - a1) * np.cos(d2)
    x = np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(a2 - a1)
    return np.degrees(np.arctan2(y, x)) % 360.0


def _stellar_colours(r: NDArray, gr: NDArray) -> NDArray:
    """ugrizy from r and g-r along an approximate main-sequence stellar locus."""
    ug = np.minimum(0.8 + 1.45 * gr, 2.8)
    ri = 0.38 * gr - 0.08 + 4.0 * np.maximum(gr - 1.2, 0.0)
    iz = 0.5 * ri
    zy = 0.3 * ri
    g = r + gr
    i = r - ri
    z = i - iz
    return np.stack([g + ug, g, r, i, z, z - zy], axis=1)


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, a: float) -> NDArray:
    """Magnitudes drawn from dN/dm ~ 10^(a m) on [lo, hi]."""
    u = rng.random(n)
    k = a * np.log(10.0)
    return np.log(np.exp(k * lo) + u * (np.exp(k * hi) - np.exp(k * lo))) / k


class Sky:
    """The deterministic sky of one simulated night (``mjd_start`` .. ``mjd_end``)."""

    def __init__(
        self, seed: int, mjd_start: float, mjd_end: float, params: SkyParams | None = None
    ) -> None:
        if mjd_end <= mjd_start:
            raise ValueError("sky: mjd_end must be after mjd_start")
        self.seed = int(seed)
        self.mjd_start, self.mjd_end = float(mjd_start), float(mjd_end)
        self.t_ref = 0.5 * (self.mjd_start + self.mjd_end)
        self.params = params or SkyParams()
        self._star_cell = lru_cache(maxsize=50000)(self._make_star_cell)
        self._mover_cell = lru_cache(maxsize=5000)(self._make_mover_cell)

    # -- cells ----------------------------------------------------------------------------
    @staticmethod
    def _cells(ra: float, dec: float, radius: float, size: float) -> list[tuple[int, int]]:
        """(band, cell) indices of every cell that may overlap the cone."""
        n_dec = round(180.0 / size)
        j0 = max(0, int(np.floor((dec - radius + 90.0) / size)))
        j1 = min(n_dec - 1, int(np.floor((dec + radius + 90.0) / size)))
        out = []
        for j in range(j0, j1 + 1):
            d_lo, d_hi = -90.0 + j * size, -90.0 + (j + 1) * size
            n_ra = max(1, int(360.0 * np.cos(np.radians(0.5 * (d_lo + d_hi))) / size))
            cos_d = max(np.cos(np.radians(min(abs(d_lo), abs(d_hi)))), 1e-6)
            if min(abs(d_lo), abs(d_hi)) + radius >= 89.0 or radius / cos_d >= 180.0:
                out.extend((j, i) for i in range(n_ra))
                continue
            half = (radius + size) / cos_d
            i0 = int(np.floor((ra - half) / 360.0 * n_ra))
            i1 = int(np.floor((ra + half) / 360.0 * n_ra))
            out.extend((j, i % n_ra) for i in sorted({i % n_ra for i in range(i0, i1 + 1)}))
        return out

    def _cell_box(
        self, rng: np.random.Generator, j: int, i: int, size: float, n: int
    ) -> tuple[NDArray, NDArray, float]:
        d_lo, d_hi = -90.0 + j * size, -90.0 + (j + 1) * size
        n_ra = max(1, int(360.0 * np.cos(np.radians(0.5 * (d_lo + d_hi))) / size))
        s_lo, s_hi = np.sin(np.radians(d_lo)), np.sin(np.radians(d_hi))
        area = np.degrees(s_hi - s_lo) * 360.0 / n_ra
        ra = (i + rng.random(n)) * 360.0 / n_ra
        dec = np.degrees(np.arcsin(s_lo + rng.random(n) * (s_hi - s_lo)))
        return ra, dec, float(area)

    def _make_star_cell(self, j: int, i: int) -> Catalog:
        p = self.params
        rng = np.random.default_rng([self.seed, STAR, j, i])
        ra_c, dec_c, area = self._cell_box(rng, j, i, p.star_cell_deg, 1)
        b = abs(float(galactic_latitude(ra_c, dec_c)[0]))
        density = p.star_density_pole + p.star_density_plane * np.exp(-b / 8.0)
        n = int(rng.poisson(density * area))
        ra, dec, _ = self._cell_box(rng, j, i, p.star_cell_deg, n)
        r = _power_law_mags(rng, n, *p.star_mag_range, a=0.25)
        gr = 0.35 + 1.1 * rng.beta(1.2, 2.5, n)
        mags = _stellar_colours(r, gr)
        var = rng.random(n) < p.variable_fraction
        kind = np.where(var, VARIABLE, STAR).astype(np.int8)
        nan = np.full(n, np.nan)
        period = np.where(var, 10 ** rng.uniform(np.log10(0.2), np.log10(5.0), n), np.nan)
        amplitude = np.where(var, rng.uniform(0.1, 1.0, n), np.nan)
        t0 = np.where(var, self.t_ref - rng.random(n) * np.nan_to_num(period), np.nan)
        ids = self._ids(STAR, j, i, n)
        return Catalog(ids, kind, ra, dec, mags, period, amplitude, t0, nan, nan, nan, nan, nan)

    def _make_transients(self, j: int, i: int) -> Catalog:
        p = self.params
        rng = np.random.default_rng([self.seed, TRANSIENT, j, i])
        _, _, area = self._cell_box(rng, j, i, p.star_cell_deg, 0)
        n = int(rng.poisson(p.transient_density * area))
        ra, dec, _ = self._cell_box(rng, j, i, p.star_cell_deg, n)
        in_night = rng.random(n) < 0.4
        fast = rng.random(n) < 1.0 / 3.0
        t_exp = np.where(
            in_night,
            rng.uniform(self.mjd_start, self.mjd_end, n),
            rng.uniform(self.mjd_start - 60.0, self.mjd_start, n),
        )
        tau_r = np.where(fast, rng.uniform(0.1, 0.6, n), rng.uniform(3.0, 8.0, n))
        tau_f = np.where(fast, rng.uniform(1.0, 4.0, n), rng.uniform(15.0, 40.0, n))
        peak_r = rng.uniform(19.0, 23.0, n)
        offsets = np.array([0.6, 0.1, 0.0, 0.2, 0.35, 0.5])
        mags = peak_r[:, None] + offsets[None, :]
        nan = np.full(n, np.nan)
        ids = self._ids(TRANSIENT, j, i, n)
        kind = np.full(n, TRANSIENT, np.int8)
        return Catalog(ids, kind, ra, dec, mags, nan, nan, t_exp, tau_r, tau_f, nan, nan, nan)

    def _make_mover_cell(self, j: int, i: int) -> Catalog:
        p = self.params
        rng = np.random.default_rng([self.seed, MOVING, j, i])
        ra_c, dec_c, area = self._cell_box(rng, j, i, p.mover_cell_deg, 1)
        beta = float(ecliptic_latitude(ra_c, dec_c)[0])
        density = p.mover_density_floor + p.mover_density_ecliptic * np.exp(-((beta / 10.0) ** 2))
        n = int(rng.poisson(density * area))
        ra, dec, _ = self._cell_box(rng, j, i, p.mover_cell_deg, n)
        neo = rng.random(n) < p.neo_fraction
        rate = np.where(neo, 10 ** rng.uniform(np.log10(0.5), 1.0, n), rng.uniform(0.12, 0.35, n))
        lon, lat = self._ecliptic(ra, dec)
        ra2, dec2 = ecliptic_to_equatorial(lon - 0.01, lat)  # retrograde: decreasing longitude
        pa_ecl = position_angle(ra, dec, ra2, dec2) + rng.normal(0.0, 10.0, n)
        pa = np.where(neo, rng.uniform(0.0, 360.0, n), pa_ecl) % 360.0
        r = _power_law_mags(rng, n, 18.0, 24.0, a=0.3)
        solar = np.array([1.4, 0.45, 0.0, -0.15, -0.2, -0.25])  # reflected sunlight
        mags = r[:, None] + solar[None, :]
        nan = np.full(n, np.nan)
        ids = self._ids(MOVING, j, i, n)
        kind = np.full(n, MOVING, np.int8)
        t_ref = np.full(n, self.t_ref)
        return Catalog(ids, kind, ra, dec, mags, nan, nan, nan, nan, nan, rate, pa, t_ref)

    @staticmethod
    def _ecliptic(ra: NDArray, dec: NDArray) -> tuple[NDArray, NDArray]:
        x, y, z = _unit(ra, dec)
        yl = y * np.cos(_EPS) + z * np.sin(_EPS)
        zl = -y * np.sin(_EPS) + z * np.cos(_EPS)
        return np.degrees(np.arctan2(yl, x)) % 360.0, np.degrees(np.arcsin(np.clip(zl, -1, 1)))

    @staticmethod
    def _ids(kind: int, j: int, i: int, n: int) -> NDArray[np.int64]:
        base = kind * 10**15 + (j * 100000 + i) * 10**4
        return base + np.arange(n, dtype=np.int64)

    # -- queries --------------------------------------------------------------------------
    def static_catalog(
        self, ra: float, dec: float, radius: float, *, transients: bool = True
    ) -> Catalog:
        """Stars, variables and (optionally) transients within ``radius`` degrees."""
        size = self.params.star_cell_deg
        parts = []
        for j, i in self._cells(ra, dec, radius, size):
            parts.append(self._star_cell(j, i))
            if transients:
                parts.append(self._make_transients(j, i))
        cat = Catalog.concat(parts)
        return cat.select(angular_separation(cat.ra, cat.dec, ra, dec) <= radius)

    def moving_catalog(self, ra: float, dec: float, radius: float, mjd: float) -> Catalog:
        """Moving objects within ``radius`` degrees of (ra, dec) at time ``mjd``."""
        reach = radius + 10.0 * abs(mjd - self.t_ref) + 0.01
        parts = [self._mover_cell(j, i) for j, i in self._cells(ra, dec, reach, 1.0)]
        cat = Catalog.concat(parts)
        r, d = self.positions(cat, mjd)
        return cat.select(angular_separation(r, d, ra, dec) <= radius)

    def positions(self, cat: Catalog, mjd: float) -> tuple[NDArray, NDArray]:
        """(ra, dec) of every object at ``mjd``; only moving objects move."""
        ra, dec = cat.ra.copy(), cat.dec.copy()
        m = cat.kind == MOVING
        if m.any():
            ra[m], dec[m] = offset_by(ra[m], dec[m], cat.pa[m], cat.rate[m] * (mjd - cat.t_ref[m]))
        return ra, dec

    def magnitudes(self, cat: Catalog, band: str, mjd: float) -> NDArray[np.float64]:
        """AB magnitude of every object in ``band`` at ``mjd`` (inf when not shining)."""
        b = BANDS.index(band)
        mag = cat.mag[:, b].copy()
        v = cat.kind == VARIABLE
        if v.any():
            phase = ((mjd - cat.t0[v]) / cat.period[v]) % 1.0
            shape = np.where(phase < 0.15, phase / 0.15, 1.0 - (phase - 0.15) / 0.85)
            scale = (1.3, 1.15, 1.0, 0.85, 0.75, 0.7)[b]
            mag[v] += scale * cat.amplitude[v] * (0.5 - shape)
        t = cat.kind == TRANSIENT
        if t.any():
            x = mjd - cat.t0[t]
            tr, tf = cat.tau_rise[t], cat.tau_fall[t]
            xp = tr * np.log1p(2.0 * tf / tr)
            f = (1 - np.exp(-np.maximum(x, 0) / tr)) ** 2 * np.exp(-np.maximum(x, 0) / tf)
            fp = (1 - np.exp(-xp / tr)) ** 2 * np.exp(-xp / tf)
            redden = (0.04, 0.03, 0.015, 0.01, 0.01, 0.01)[b] * np.maximum(x - xp, 0.0)
            with np.errstate(divide="ignore"):
                mt = mag[t] - 2.5 * np.log10(f / fp) + redden
            mag[t] = np.where(x > 0, mt, np.inf)
        return mag


def mag_to_njy(mag: NDArray[np.float64]) -> NDArray[np.float64]:
    """AB magnitude to flux density in nJy (0 for inf)."""
    return 10.0 ** ((AB_NJY_ZERO - mag) / 2.5)
