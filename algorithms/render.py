"""Numba kernels that turn a list of sources into CCD pixels (pure math, no I/O).

Images are float32 ``[row, col]`` arrays; pixel (x, y) has its centre at integer coordinates.
Sources are elliptical Moffat profiles (``beta``), trailed along a segment for moving objects.
Random numbers: Gaussian deviates are passed in (numpy ``Generator``, reproducible); the few
Poisson and overscan deviates drawn inside kernels use numba's generator, seeded by
:func:`seed_kernels` from that same ``Generator``.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@nb.njit(cache=True)
def seed_kernels(seed: int) -> None:
    """Seed numba's internal generator (used for Poisson and overscan deviates)."""
    np.random.seed(seed)


def moffat_alpha(fwhm: float | F64, beta: float) -> float | F64:
    """Moffat core width alpha for a FWHM: fwhm = 2 alpha sqrt(2^(1/beta) - 1)."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_enclosed(radius: float | F64, fwhm: float, beta: float) -> float | F64:
    """Fraction of a circular Moffat's flux inside ``radius`` pixels."""
    a = moffat_alpha(fwhm, beta)
    return 1.0 - (1.0 + (np.asarray(radius) / a) ** 2) ** (1.0 - beta)


@nb.njit(cache=True)
def _stamp(
    img: F32,
    xc: float,
    yc: float,
    flux: float,
    alpha: float,
    g1: float,
    g2: float,
    beta: float,
    radius: int,
    nsub: int,
) -> None:
    ny, nx = img.shape
    g = math.sqrt(g1 * g1 + g2 * g2)
    g = min(g, 0.5)
    phi = 0.5 * math.atan2(g2, g1)
    a2 = alpha * alpha * (1.0 + g) / (1.0 - g)
    b2 = alpha * alpha * (1.0 - g) / (1.0 + g)
    c, s = math.cos(phi), math.sin(phi)
    q11 = c * c / a2 + s * s / b2
    q22 = s * s / a2 + c * c / b2
    q12 = c * s * (1.0 / a2 - 1.0 / b2)
    norm = flux * (beta - 1.0) / (math.pi * alpha * alpha) / (nsub * nsub)
    ix, iy = round(xc), round(yc)
    x_lo, x_hi = max(ix - radius, 0), min(ix + radius + 1, nx)
    y_lo, y_hi = max(iy - radius, 0), min(iy + radius + 1, ny)
    step = 1.0 / nsub
    off = 0.5 * step - 0.5
    for y in range(y_lo, y_hi):
        for x in range(x_lo, x_hi):
            acc = 0.0
            for sy in range(nsub):
                dy = y + off + sy * step - yc
                for sx in range(nsub):
                    dx = x + off + sx * step - xc
                    q = q11 * dx * dx + 2.0 * q12 * dx * dy + q22 * dy * dy
                    acc += (1.0 + q) ** (-beta)
            img[y, x] += norm * acc


@nb.njit(cache=True)
def render_sources(
    img: F32,
    x0: F64,
    y0: F64,
    x1: F64,
    y1: F64,
    flux: F64,
    fwhm: F64,
    g1: F64,
    g2: F64,
    beta: float,
    floor: float,
) -> None:
    """Add sources (electrons) to ``img``; each is trailed from (x0, y0) to (x1, y1).

    A stamp reaches where the profile falls below ``floor`` electrons per pixel; PSFs narrower
    than 2.5 pixels are integrated on a 3 x 3 sub-pixel grid.
    """
    for k in range(flux.size):
        f = flux[k]
        if not f > 0.0:
            continue
        alpha = fwhm[k] / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        peak = f * (beta - 1.0) / (math.pi * alpha * alpha)
        reach = alpha * math.sqrt(max((peak / floor) ** (1.0 / beta) - 1.0, 1.0))
        radius = int(min(max(reach, 2.0 * fwhm[k]), 300.0)) + 1
        nsub = 3 if fwhm[k] < 2.5 else 1
        length = math.hypot(x1[k] - x0[k], y1[k] - y0[k])
        nstep = max(1, math.ceil(length / 0.5))
        for i in range(nstep):
            t = (i + 0.5) / nstep if nstep > 1 else 0.0
            xc = x0[k] + t * (x1[k] - x0[k])
            yc = y0[k] + t * (y1[k] - y0[k])
            _stamp(img, xc, yc, f / nstep, alpha, g1[k], g2[k], beta, radius, nsub)


@nb.njit(cache=True)
def expose(
    src: F32,
    flat: F32,
    dark: F32,
    exptime: float,
    sky0: float,
    sky_dx: float,
    sky_dy: float,
    read_noise: float,
    z: F32,
    out: F32,
) -> None:
    """Expected charge ``(sky + src) * flat + dark * t`` with shot and read noise, in e-.

    Where the expected charge is >= 64 e-, shot and read noise are one Gaussian deviate
    (``z``) of variance ``lam + rn^2``; below, shot noise is an exact Poisson deviate.
    """
    ny, nx = src.shape
    rn2 = read_noise * read_noise
    for y in range(ny):
        for x in range(nx):
            sky = sky0 + sky_dx * x + sky_dy * y
            lam = (sky + src[y, x]) * flat[y, x] + dark[y, x] * exptime
            if lam >= 64.0:
                out[y, x] = lam + math.sqrt(lam + rn2) * z[y, x]
            else:
                out[y, x] = np.random.poisson(max(lam, 0.0)) + read_noise * z[y, x]


@nb.njit(cache=True)
def add_cosmic_rays(img: F32, x: F64, y: F64, angle: F64, length: F64, charge: F64) -> None:
    """Deposit straight cosmic-ray tracks (total ``charge`` e- each), bilinearly splatted."""
    ny, nx = img.shape
    for k in range(x.size):
        n = max(1, int(length[k] * 4.0))
        q = charge[k] / n
        ca, sa = math.cos(angle[k]), math.sin(angle[k])
        for i in range(n):
            t = (i + 0.5) / n * length[k]
            px, py = x[k] + t * ca, y[k] + t * sa
            ix, iy = math.floor(px), math.floor(py)
            fx, fy = px - ix, py - iy
            for dy, wy in ((0, 1.0 - fy), (1, fy)):
                for dx, wx in ((0, 1.0 - fx), (1, fx)):
                    xx, yy = ix + dx, iy + dy
                    if 0 <= xx < nx and 0 <= yy < ny:
                        img[yy, xx] += q * wx * wy


@nb.njit(cache=True)
def bleed(img: F32, full_well: float, x_lo: int, x_hi: int, y_lo: int, y_hi: int) -> int:
    """Spill charge above ``full_well`` up and down its column within rows [y_lo, y_hi).

    Charge that reaches the segment edge is lost (to the serial register). Returns the number
    of pixels left at full well.
    """
    n_sat = 0
    hit = np.zeros(x_hi - x_lo, np.bool_)
    for y in range(y_lo, y_hi):  # row-major scan: cheap on C-ordered images
        for x in range(x_lo, x_hi):
            if img[y, x] > full_well:
                hit[x - x_lo] = True
    for x in range(x_lo, x_hi):
        if not hit[x - x_lo]:
            continue
        for y in range(y_lo, y_hi):
            excess = img[y, x] - full_well
            if excess <= 0.0:
                continue
            img[y, x] = full_well
            up = 0.5 * excess
            down = excess - up
            yy = y + 1
            while up > 0.0 and yy < y_hi:
                room = full_well - img[yy, x]
                if room > 0.0:
                    take = min(room, up)
                    img[yy, x] += take
                    up -= take
                yy += 1
            yy = y - 1
            while down > 0.0 and yy >= y_lo:
                room = full_well - img[yy, x]
                if room > 0.0:
                    take = min(room, down)
                    img[yy, x] += take
                    down -= take
                yy -= 1
        for y in range(y_lo, y_hi):
            if img[y, x] >= full_well:
                n_sat += 1
    return n_sat


@nb.njit(cache=True)
def to_readout(
    seg: F32, gain: float, full_well: float, flip_x: bool, flip_y: bool, prescan: int, out: F32
) -> None:
    """Signal in ADU of an amplifier's charge, in readout order, into ``out``'s data region.

    Full-well pixels get a signal above the ADC saturation so that digitizing clips them.
    """
    ny, nx = seg.shape
    for y in range(ny):
        ry = ny - 1 - y if flip_y else y
        for x in range(nx):
            rx = nx - 1 - x if flip_x else x
            v = seg[y, x]
            if v >= full_well:
                v = 1.1 * full_well
            out[ry, prescan + rx] = v / gain


@nb.njit(cache=True)
def crosstalk(stack: F32, coeff: F64, threshold: float) -> None:
    """Add ``coeff[src, vic] * signal_src`` to every victim amplifier, in readout order.

    Only source pixels brighter than ``threshold`` ADU are propagated (fainter ones would add
    less than ``threshold * |coeff|``, far below the read noise).
    """
    n, ny, nx = stack.shape
    add = np.zeros_like(stack)
    for s in range(n):
        for y in range(ny):
            for x in range(nx):
                v = stack[s, y, x]
                if v > threshold:
                    for t in range(n):
                        if t != s:
                            add[t, y, x] += coeff[s, t] * v
    stack += add


@nb.njit(cache=True)
def digitize(
    signal: F32,
    bias: float,
    col_pattern: F32,
    row_offset: F32,
    glow_rows: F32,
    glow_cols: F32,
    read_noise_adu: float,
    prescan: int,
    data_nx: int,
    data_ny: int,
    saturate: int,
    out: NDArray[np.int32],
) -> None:
    """Raw ADU = bias + column pattern + row offset + signal (+ read noise off the data region).

    ``glow_rows[y] * glow_cols[x - prescan]`` is a fixed 2-D bias structure present in the
    data region only (what survives serial and parallel overscan subtraction).

    The data region's read noise was already drawn in :func:`expose`; prescan and overscan
    pixels get theirs here. Values are rounded and clipped to [0, saturate].
    """
    ny, nx = signal.shape
    for y in range(ny):
        for x in range(nx):
            v = bias + col_pattern[x] + row_offset[y] + signal[y, x]
            if y < data_ny and prescan <= x < prescan + data_nx:
                v += glow_rows[y] * glow_cols[x - prescan]
            else:
                v += read_noise_adu * np.random.standard_normal()
            iv = math.floor(v + 0.5)
            out[y, x] = min(max(iv, 0), saturate)
