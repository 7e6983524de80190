"""Sky <-> detector pixel mapping of the simulated camera: gnomonic (TAN) plus radial distortion.

Conventions (see docs/raw_format.md):

* Focal-plane pixel offsets ``(dx, dy)`` from the boresight, in pixels, along the assembled CCD
  axes. Radial distortion in the tangent plane: ``d' = d (1 + K |d|^2)`` with
  ``K = k_deg2 * scale_deg^2``; this is exactly the SIP polynomial ``A_3_0 = A_1_2 = B_2_1 =
  B_0_3 = K`` when CRPIX is the boresight.
* ``CD = scale * [[-cos t, sin t], [sin t, cos t]]`` with ``t = rotSkyPos``: at ``t = 0`` +y is
  north and +x is west (east left, the usual sky parity); +y points ``t`` east of north.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


def gnomonic(ra: ArrayLike, dec: ArrayLike, ra0: float, dec0: float) -> tuple[Array, Array]:
    """Tangent-plane (xi east, eta north) in degrees of (ra, dec) about (ra0, dec0)."""
    ra_r, dec_r = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec_r) + np.cos(d0) * np.cos(dec_r) * np.cos(ra_r - a0)
    xi = np.cos(dec_r) * np.sin(ra_r - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec_r) - np.sin(d0) * np.cos(dec_r) * np.cos(ra_r - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def inverse_gnomonic(xi: ArrayLike, eta: ArrayLike, ra0: float, dec0: float) -> tuple[Array, Array]:
    """(ra, dec) in degrees of tangent-plane coordinates (degrees) about (ra0, dec0)."""
    x, y = np.radians(np.asarray(xi, float)), np.radians(np.asarray(eta, float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    denom = np.cos(d0) - y * np.sin(d0)
    ra = a0 + np.arctan2(x, denom)
    dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def cd_matrix(scale_deg: float, rot_deg: float) -> Array:
    """The CD matrix (degrees per pixel) for a sky rotation angle."""
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    return scale_deg * np.array([[-c, s], [s, c]])


def pixel_to_sky(
    x: ArrayLike,
    y: ArrayLike,
    *,
    crpix0: tuple[float, float],
    ra0: float,
    dec0: float,
    rot_deg: float,
    scale_deg: float,
    k_deg2: float,
) -> tuple[Array, Array]:
    """(ra, dec) of 0-based pixel coordinates; ``crpix0`` is the boresight, 0-based."""
    dx = np.asarray(x, float) - crpix0[0]
    dy = np.asarray(y, float) - crpix0[1]
    f = 1.0 + k_deg2 * scale_deg**2 * (dx * dx + dy * dy)
    cd = cd_matrix(scale_deg, rot_deg)
    xi = cd[0, 0] * dx * f + cd[0, 1] * dy * f
    eta = cd[1, 0] * dx * f + cd[1, 1] * dy * f
    return inverse_gnomonic(xi, eta, ra0, dec0)


def sky_to_pixel(
    ra: ArrayLike,
    dec: ArrayLike,
    *,
    crpix0: tuple[float, float],
    ra0: float,
    dec0: float,
    rot_deg: float,
    scale_deg: float,
    k_deg2: float,
) -> tuple[Array, Array]:
    """0-based pixel coordinates of (ra, dec); inverse of :func:`pixel_to_sky`."""
    xi, eta = gnomonic(ra, dec, ra0, dec0)
    inv = cd_matrix(1.0 / scale_deg, rot_deg)  # the rotation part is its own inverse
    u = inv[0, 0] * xi + inv[0, 1] * eta
    v = inv[1, 0] * xi + inv[1, 1] * eta
    rd = np.hypot(u, v)
    kk = k_deg2 * scale_deg**2
    r = rd.copy()
    for _ in range(4):  # Newton on r (1 + kk r^2) = rd
        r -= (r * (1.0 + kk * r * r) - rd) / (1.0 + 3.0 * kk * r * r)
    ratio = np.divide(r, rd, out=np.ones_like(rd), where=rd > 0)
    return u * ratio + crpix0[0], v * ratio + crpix0[1]


def sip_header(
    *,
    crpix0: tuple[float, float],
    ra0: float,
    dec0: float,
    rot_deg: float,
    scale_deg: float,
    k_deg2: float,
) -> dict[str, float | int | str]:
    """FITS TAN-SIP keywords (1-based CRPIX) equal to :func:`pixel_to_sky`."""
    cd = cd_matrix(scale_deg, rot_deg)
    kk = k_deg2 * scale_deg**2
    head: dict[str, float | int | str] = {
        "WCSAXES": 2,
        "CTYPE1": "RA---TAN-SIP",
        "CTYPE2": "DEC--TAN-SIP",
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "CRPIX1": crpix0[0] + 1.0,
        "CRPIX2": crpix0[1] + 1.0,
        "CRVAL1": ra0,
        "CRVAL2": dec0,
        "CD1_1": cd[0, 0],
        "CD1_2": cd[0, 1],
        "CD2_1": cd[1, 0],
        "CD2_2": cd[1, 1],
        "A_ORDER": 3,
        "B_ORDER": 3,
        "A_3_0": kk,
        "A_1_2": kk,
        "B_2_1": kk,
        "B_0_3": kk,
    }
    return head


def offset_by(
    ra: ArrayLike, dec: ArrayLike, pa_deg: ArrayLike, sep_deg: ArrayLike
) -> tuple[Array, Array]:
    """Move (ra, dec) by ``sep_deg`` along a great circle at position angle ``pa_deg`` (E of N)."""
    a, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    pa, s = np.radians(np.asarray(pa_deg, float)), np.radians(np.asarray(sep_deg, float))
    d2 = np.arcsin(np.sin(d) * np.cos(s) + np.cos(d) * np.sin(s) * np.cos(pa))
    a2 = a + np.arctan2(np.sin(pa) * np.sin(s) * np.cos(d), np.cos(s) - np.sin(d) * np.sin(d2))
    return np.degrees(a2) % 360.0, np.degrees(d2)


def angular_separation(ra1: ArrayLike, dec1: ArrayLike, ra2: float, dec2: float) -> Array:
    """Great-circle separation in degrees (haversine, stable at small angles)."""
    a1, d1 = np.radians(np.asarray(ra1, float)), np.radians(np.asarray(dec1, float))
    a2, d2 = np.radians(ra2), np.radians(dec2)
    h = np.sin((d1 - d2) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((a1 - a2) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))
