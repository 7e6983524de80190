"""Gnomonic (TAN) projection with SIP polynomial distortion, 0-based pixel coordinates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

DEG = np.pi / 180.0


def tan_project(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sky (deg) → intermediate world coordinates ξ, η (deg) about (ra0, dec0)."""
    a, d = np.asarray(ra) * DEG, np.asarray(dec) * DEG
    a0, d0 = ra0 * DEG, dec0 * DEG
    da = a - a0
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(da)
    if np.any(cosc <= 0):
        raise ValueError("point more than 90° from the tangent point")
    xi = np.cos(d) * np.sin(da) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(da)) / cosc
    return xi / DEG, eta / DEG


def tan_deproject(
    xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Intermediate world coordinates (deg) → sky (deg)."""
    x, y = np.asarray(xi) * DEG, np.asarray(eta) * DEG
    d0 = dec0 * DEG
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(rho > 0, y * np.sin(c) / np.where(rho > 0, rho, 1.0), 0.0)
    dec = np.arcsin(np.cos(c) * np.sin(d0) + ratio * np.cos(d0))
    ra = ra0 * DEG + np.arctan2(
        x * np.sin(c), rho * np.cos(d0) * np.cos(c) - y * np.sin(d0) * np.sin(c)
    )
    return np.mod(ra / DEG, 360.0), dec / DEG


def poly_exponents(order: int, min_order: int = 0) -> list[tuple[int, int]]:
    return [(p, t - p) for t in range(min_order, order + 1) for p in range(t, -1, -1)]


def poly_design(u: np.ndarray, v: np.ndarray, exps: list[tuple[int, int]]) -> np.ndarray:
    return np.stack([u**p * v**q for p, q in exps], axis=-1)


@dataclass(frozen=True)
class TanSipWcs:
    """FITS TAN-SIP: (ξ, η) = CD · (u + A(u, v), v + B(u, v)), u = x − crpix (0-based).

    ``sip_a``/``sip_b`` map exponent pairs (p, q), 2 ≤ p+q ≤ order, to coefficients.
    """

    crpix: tuple[float, float]
    crval: tuple[float, float]
    cd: np.ndarray
    sip_a: dict[tuple[int, int], float] = field(default_factory=dict)
    sip_b: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def sip_order(self) -> int:
        keys = list(self.sip_a) + list(self.sip_b)
        return max((p + q for p, q in keys), default=0)

    def _distort(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fu = np.zeros_like(u, dtype=float)
        fv = np.zeros_like(v, dtype=float)
        for (p, q), c in self.sip_a.items():
            fu = fu + c * u**p * v**q
        for (p, q), c in self.sip_b.items():
            fv = fv + c * u**p * v**q
        return u + fu, v + fv

    def pixel_to_sky(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.asarray(x, dtype=float) - self.crpix[0]
        v = np.asarray(y, dtype=float) - self.crpix[1]
        uu, vv = self._distort(u, v)
        xi = self.cd[0, 0] * uu + self.cd[0, 1] * vv
        eta = self.cd[1, 0] * uu + self.cd[1, 1] * vv
        return tan_deproject(xi, eta, *self.crval)

    def sky_to_pixel(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse by Newton iteration on the forward SIP polynomial (exact to 1e-6 px)."""
        xi, eta = tan_project(ra, dec, *self.crval)
        inv = np.linalg.inv(self.cd)
        tu = inv[0, 0] * xi + inv[0, 1] * eta
        tv = inv[1, 0] * xi + inv[1, 1] * eta
        u, v = tu.astype(float).copy(), tv.astype(float).copy()
        if self.sip_a or self.sip_b:
            for _ in range(20):
                fu, fv = self._distort(u, v)
                ru, rv = fu - tu, fv - tv
                h = 1e-3
                fu1, fv1 = self._distort(u + h, v)
                fu2, fv2 = self._distort(u, v + h)
                j11, j21 = (fu1 - fu) / h, (fv1 - fv) / h
                j12, j22 = (fu2 - fu) / h, (fv2 - fv) / h
                det = j11 * j22 - j12 * j21
                du = (j22 * ru - j12 * rv) / det
                dv = (-j21 * ru + j11 * rv) / det
                u, v = u - du, v - dv
                if np.max(np.abs(du) + np.abs(dv), initial=0.0) < 1e-7:
                    break
        return u + self.crpix[0], v + self.crpix[1]

    def pixel_scale(self) -> float:
        """Mean pixel scale in arcsec at the reference pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.cd))) * 3600.0)

    def shifted(self, dx: float, dy: float) -> TanSipWcs:
        """The same mapping for an image whose pixel (0, 0) is this one's (dx, dy)."""
        return replace(self, crpix=(self.crpix[0] - dx, self.crpix[1] - dy))

    def to_header(self) -> dict[str, object]:
        """FITS WCS cards (1-based CRPIX), with SIP terms when distorted."""
        sip = bool(self.sip_a or self.sip_b)
        hdr: dict[str, object] = {
            "WCSAXES": 2,
            "CTYPE1": "RA---TAN-SIP" if sip else "RA---TAN",
            "CTYPE2": "DEC--TAN-SIP" if sip else "DEC--TAN",
            "CUNIT1": "deg",
            "CUNIT2": "deg",
            "CRPIX1": self.crpix[0] + 1.0,
            "CRPIX2": self.crpix[1] + 1.0,
            "CRVAL1": self.crval[0],
            "CRVAL2": self.crval[1],
            "CD1_1": float(self.cd[0, 0]),
            "CD1_2": float(self.cd[0, 1]),
            "CD2_1": float(self.cd[1, 0]),
            "CD2_2": float(self.cd[1, 1]),
            "RADESYS": "ICRS",
        }
        if sip:
            hdr["A_ORDER"] = self.sip_order
            hdr["B_ORDER"] = self.sip_order
            for (p, q), c in self.sip_a.items():
                hdr[f"A_{p}_{q}"] = float(c)
            for (p, q), c in self.sip_b.items():
                hdr[f"B_{p}_{q}"] = float(c)
        return hdr

    @classmethod
    def from_header(cls, header: Mapping[str, object]) -> TanSipWcs:
        """Parse TAN or TAN-SIP FITS cards (``CDi_j``, 1-based ``CRPIXi``, ``A_p_q``/``B_p_q``).

        Raises ``ValueError`` when a card is missing or the projection is not TAN.
        """
        try:
            ctype = str(header["CTYPE1"])
            if "TAN" not in ctype:
                raise ValueError(f"unsupported projection {ctype!r}")
            crpix = (float(header["CRPIX1"]) - 1.0, float(header["CRPIX2"]) - 1.0)  # type: ignore[arg-type]
            crval = (float(header["CRVAL1"]), float(header["CRVAL2"]))  # type: ignore[arg-type]
            cd = np.array(
                [[float(header[f"CD{i}_{j}"]) for j in (1, 2)] for i in (1, 2)]  # type: ignore[arg-type]
            )
        except KeyError as e:
            raise ValueError(f"WCS card {e} missing") from e
        sip: dict[str, dict[tuple[int, int], float]] = {"A": {}, "B": {}}
        for key in header:
            parts = str(key).split("_")
            if len(parts) == 3 and parts[0] in sip and parts[1].isdigit() and parts[2].isdigit():
                sip[parts[0]][(int(parts[1]), int(parts[2]))] = float(header[key])  # type: ignore[arg-type]
        return cls(crpix=crpix, crval=crval, cd=cd, sip_a=sip["A"], sip_b=sip["B"])

    @classmethod
    def simple(
        cls,
        crval: tuple[float, float],
        crpix: tuple[float, float],
        scale_arcsec: float,
        rotation_deg: float = 0.0,
    ) -> TanSipWcs:
        """North up, east left (RA decreasing with x), rotated by ``rotation_deg``."""
        s = scale_arcsec / 3600.0
        c, si = np.cos(rotation_deg * DEG), np.sin(rotation_deg * DEG)
        cd = s * np.array([[-c, si], [si, c]])
        return cls(crpix=crpix, crval=crval, cd=cd)
