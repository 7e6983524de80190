"""Instrument signature removal: raw amplifier arrays → calibrated image, variance and mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import ndimage

from algorithms import mask as mk
from algorithms.geometry import AmpGeometry, CcdGeometry


@dataclass(frozen=True)
class Calibrations:
    """Master calibrations on the assembled CCD grid; any may be absent.

    ``bias`` is in electrons, ``dark`` in electrons per second, ``flat`` is normalised to
    about 1, ``defects`` is True on bad pixels, ``crosstalk[victim, source]`` is the fraction
    of the source amplifier's signal (in readout order) that appears on the victim.
    """

    bias: np.ndarray | None = None
    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    defects: np.ndarray | None = None
    crosstalk: np.ndarray | None = None


@dataclass
class IsrResult:
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    overscan_levels: dict[str, float]
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IsrConfig:
    bleed_fraction: float = 0.8
    sat_grow: int = 1
    edge_width: int = 4
    overscan_skip: int = 2


def overscan_profile(raw: np.ndarray, amp: AmpGeometry, skip: int = 2) -> np.ndarray:
    """Row-wise robust serial overscan level: per-row median over the BIASSEC columns.

    The first ``skip`` overscan columns are dropped because charge-transfer inefficiency
    trails signal into them.
    """
    ys, xs = amp.serial_overscan.slices
    cols = raw[ys, xs]
    if cols.shape[1] > skip + 2:
        cols = cols[:, skip:]
    if not np.all(np.isfinite(cols)):
        return np.nanmedian(cols, axis=1)
    return np.median(cols, axis=1)


def overscan_correct(raw: np.ndarray, amp: AmpGeometry, skip: int = 2) -> np.ndarray:
    """Subtract the serial (row-wise) and then parallel (column-wise) overscan; returns DATASEC."""
    if raw.ndim != 2:
        raise ValueError(f"amp {amp.name}: raw must be 2-D, got shape {raw.shape}")
    need_y = max(amp.data.y1, amp.serial_overscan.y1)
    need_x = max(amp.data.x1, amp.serial_overscan.x1)
    if raw.shape[0] < need_y or raw.shape[1] < need_x:
        raise ValueError(f"amp {amp.name}: raw shape {raw.shape} too small for its sections")
    prof = overscan_profile(raw, amp, skip)
    data = raw[amp.data.slices].astype(np.float32) - prof[:, None].astype(np.float32)
    par = amp.parallel_overscan
    if par is not None and par.ny > 0:
        x0, x1 = max(par.x0, amp.data.x0), min(par.x1, amp.data.x1)
        if x1 - x0 == amp.data.nx:
            block = raw[par.y0 : par.y1, x0:x1].astype(np.float32)
            block -= np.median(raw[par.y0 : par.y1, amp.serial_overscan.x0 + skip :], axis=1)[
                :, None
            ]
            data -= np.median(block, axis=0)[None, :]
    return data


def _to_detector(data: np.ndarray, amp: AmpGeometry) -> np.ndarray:
    if amp.detector.flip_x:
        data = data[:, ::-1]
    if amp.detector.flip_y:
        data = data[::-1, :]
    return data


def saturation_mask(raw_data: np.ndarray, saturation: float, bleed_fraction: float) -> np.ndarray:
    """Saturated pixels plus bleed trails: column-connected pixels above bleed_fraction × sat."""
    sat = raw_data >= saturation
    if not sat.any():
        return sat
    candidates = raw_data >= bleed_fraction * saturation
    column = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=bool)
    return ndimage.binary_propagation(sat, structure=column, mask=candidates | sat)


def crosstalk_correct(amps: list[np.ndarray | None], coeffs: np.ndarray) -> None:
    """In-place ``victim -= Σ c[victim, source] · source`` on readout-ordered amp arrays."""
    n = len(amps)
    if coeffs.shape != (n, n):
        raise ValueError(f"crosstalk matrix shape {coeffs.shape} != ({n}, {n})")
    present = [i for i, a in enumerate(amps) if a is not None]
    shapes = {amps[i].shape for i in present}  # type: ignore[union-attr]
    if len(shapes) != 1:
        raise ValueError("crosstalk correction needs equally sized amplifiers")
    shape = shapes.pop()
    stack = np.stack([amps[i] for i in present]).reshape(len(present), -1)  # type: ignore[misc]
    c = coeffs[np.ix_(present, present)].astype(np.float32).copy()
    np.fill_diagonal(c, 0.0)
    corr = (c @ stack).reshape(len(present), *shape)
    for k, i in enumerate(present):
        amps[i] -= corr[k]  # type: ignore[operator]


_EMPTY = np.zeros((0, 0), dtype=np.float32)


@numba.njit(cache=True, nogil=True)
def _calibrate(
    image: np.ndarray, variance: np.ndarray, rn2: np.ndarray, bad: np.ndarray,
    exptime: np.float32, bias: np.ndarray, dark: np.ndarray, flat: np.ndarray,
) -> None:  # fmt: skip
    """In one pass: image −= bias + dark·t; variance = max(image, 0) + rn²; ÷ flat (and flat²).

    A calibration given as an empty array is skipped; flat values ≤ 0.05 or non-finite mark
    the pixel bad and are treated as 1.
    """
    ny, nx = image.shape
    hb, hd, hf = bias.size > 0, dark.size > 0, flat.size > 0
    for y in range(ny):
        for x in range(nx):
            v = image[y, x]
            if hb:
                v -= bias[y, x]
            if hd:
                v -= dark[y, x] * exptime
            var = max(v, np.float32(0.0)) + rn2[y, x]
            if hf:
                f = flat[y, x]
                if not (np.isfinite(f) and f > 0.05):
                    bad[y, x] = True
                    f = np.float32(1.0)
                v /= f
                var /= f * f
            image[y, x] = v
            variance[y, x] = var


def _grow_saturation(msk: np.ndarray, grow: int) -> None:
    """Dilate SAT by ``grow`` pixels (4-connected, as ``binary_dilation`` iterated)."""
    ys, xs = np.nonzero(msk & mk.SAT)
    if ys.size:
        _dilate_bit(msk, ys, xs, grow, mk.SAT)


@numba.njit(cache=True, nogil=True)
def _dilate_bit(msk: np.ndarray, ys: np.ndarray, xs: np.ndarray, r: int, bit: int) -> None:
    ny, nx = msk.shape
    for k in range(ys.size):
        for dy in range(-r, r + 1):
            y = ys[k] + dy
            if y < 0 or y >= ny:
                continue
            for dx in range(-r + abs(dy), r - abs(dy) + 1):
                x = xs[k] + dx
                if 0 <= x < nx:
                    msk[y, x] |= bit


def _check_calib(name: str, arr: np.ndarray | None, shape: tuple[int, int]) -> None:
    if arr is not None and arr.shape != shape:
        raise ValueError(f"{name} shape {arr.shape} != CCD shape {shape}")


def run_isr(
    raw_amps: Sequence[np.ndarray | None],
    geometry: CcdGeometry,
    calibs: Calibrations,
    exptime: float,
    config: IsrConfig | None = None,
) -> IsrResult:
    """Overscan, assembly, gain, crosstalk, bias, dark, flat, saturation/defect masks, variance.

    ``raw_amps`` follows ``geometry.amps``; a missing amplifier is ``None`` and its pixels are
    marked NO_DATA. Output image and variance are in electrons (flat-fielded).
    """
    cfg = config or IsrConfig()
    if len(raw_amps) != len(geometry.amps):
        raise ValueError(f"{len(raw_amps)} raw arrays for {len(geometry.amps)} amplifiers")
    shape = (geometry.ny, geometry.nx)
    for name in ("bias", "dark", "flat", "defects"):
        _check_calib(name, getattr(calibs, name), shape)
    flags: list[str] = []
    msk = mk.new_mask(shape)
    amp_data: list[np.ndarray | None] = []
    sat_masks: list[np.ndarray | None] = []
    levels: dict[str, float] = {}
    for raw, amp in zip(raw_amps, geometry.amps, strict=True):
        if raw is None:
            flags.append(f"missing_amplifier:{amp.name}")
            amp_data.append(None)
            sat_masks.append(None)
            msk[amp.detector.slices] |= mk.NO_DATA
            continue
        raw_data = raw[amp.data.slices]
        sat_masks.append(saturation_mask(raw_data, amp.saturation, cfg.bleed_fraction))
        data = overscan_correct(raw, amp, cfg.overscan_skip)
        levels[amp.name] = float(np.nanmedian(overscan_profile(raw, amp, cfg.overscan_skip)))
        data *= np.float32(amp.gain)
        amp_data.append(data)
    if all(a is None for a in amp_data):
        raise ValueError("no amplifier data at all")
    if calibs.crosstalk is not None:
        crosstalk_correct(amp_data, np.asarray(calibs.crosstalk))
    image = np.zeros(shape, dtype=np.float32)
    rn2 = np.zeros(shape, dtype=np.float32)
    for data, sat, amp in zip(amp_data, sat_masks, geometry.amps, strict=True):
        if data is None or sat is None:
            continue
        sl = amp.detector.slices
        image[sl] = _to_detector(data, amp)
        rn2[sl] = np.float32(amp.read_noise**2)
        if sat.any():
            view = msk[sl]
            view[_to_detector(sat, amp)] |= mk.SAT
    nan = ~np.isfinite(image)
    if nan.any():
        flags.append(f"nan_pixels:{int(nan.sum())}")
        msk[nan] |= mk.NO_DATA
        image[nan] = 0.0
    bias = None if calibs.bias is None else np.asarray(calibs.bias, dtype=np.float32)
    dark = None if calibs.dark is None else np.asarray(calibs.dark, dtype=np.float32)
    flat = None if calibs.flat is None else np.asarray(calibs.flat, dtype=np.float32)
    variance = np.empty(shape, dtype=np.float32)
    bad = np.zeros(shape, dtype=np.bool_)
    _calibrate(
        image, variance, rn2, bad, np.float32(exptime),
        bias if bias is not None else _EMPTY, dark if dark is not None else _EMPTY,
        flat if flat is not None else _EMPTY,
    )  # fmt: skip
    del rn2
    msk[bad] |= mk.BAD
    if calibs.defects is not None:
        msk[np.asarray(calibs.defects, dtype=bool)] |= mk.BAD
    if cfg.sat_grow > 0:
        _grow_saturation(msk, cfg.sat_grow)
    if cfg.edge_width > 0:
        e = cfg.edge_width
        for sl in (np.s_[:e, :], np.s_[-e:, :], np.s_[:, :e], np.s_[:, -e:]):
            msk[sl] |= mk.EDGE
    nodata = (msk & mk.NO_DATA) != 0
    image[nodata] = 0.0
    variance[nodata] = np.inf
    return IsrResult(image=image, variance=variance, mask=msk, overscan_levels=levels, flags=flags)
