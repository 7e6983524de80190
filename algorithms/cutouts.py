"""Postage stamps of science, template and difference images around DIASources."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms import mask as mk
from algorithms.wcs import TanSipWcs


@dataclass(frozen=True)
class Plane:
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Cutout:
    """One stamp: pixels outside the parent image are NaN / NO_DATA; ``wcs`` is exact."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    wcs: TanSipWcs
    x0: int
    y0: int
    psf: np.ndarray | None = None


def cutout_size(bbox_size: int, fwhm: float, min_size: int = 30, max_size: int = 102) -> int:
    """Stamp side: the footprint plus 2 FWHM margin each side, within [min_size, max_size]."""
    return int(np.clip(int(np.ceil(bbox_size + 4 * fwhm)), min_size, max_size))


def make_cutout(
    plane: Plane, wcs: TanSipWcs, x: float, y: float, size: int, psf: np.ndarray | None = None
) -> Cutout:
    if not 1 <= size <= 4096:
        raise ValueError(f"cutout size {size} out of range")
    ny, nx = plane.image.shape
    x0 = round(x) - size // 2
    y0 = round(y) - size // 2
    img = np.full((size, size), np.nan, dtype=np.float32)
    var = np.full((size, size), np.nan, dtype=np.float32)
    msk = np.full((size, size), mk.NO_DATA, dtype=mk.MASK_DTYPE)
    ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + size, nx), min(y0 + size, ny)
    if ax1 > ax0 and ay1 > ay0:
        dst = np.s_[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]
        src = np.s_[ay0:ay1, ax0:ax1]
        img[dst] = plane.image[src]
        var[dst] = plane.variance[src]
        msk[dst] = plane.mask[src]
    return Cutout(image=img, variance=var, mask=msk, wcs=wcs.shifted(x0, y0), x0=x0, y0=y0, psf=psf)


def make_cutouts(
    sources: np.ndarray,
    planes: dict[str, Plane],
    wcs: TanSipWcs,
    fwhm: float,
    psfs: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Cutout]]:
    """For each source row (``x``, ``y``, ``bboxSize``) a dict of stamps, one per plane name."""
    out: list[dict[str, Cutout]] = []
    for r in sources:
        size = cutout_size(int(r["bboxSize"]), fwhm)
        out.append(
            {
                name: make_cutout(
                    p,
                    wcs,
                    float(r["x"]),
                    float(r["y"]),
                    size,
                    None if psfs is None else psfs.get(name),
                )
                for name, p in planes.items()
            }
        )
    return out
