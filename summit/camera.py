"""The camera simulator: one visit x one detector -> a raw multi-extension FITS and its truth.

Order of the physics (electrons, assembled CCD): sources through the visit PSF (Moffat
beta = 3, FWHM = seeingFwhmGeom growing 5 % to the field edge, tangential ellipticity up to
0.03 plus a per-visit wind shake) and trailed for moving objects; sky with a mild gradient;
both times the flat; plus dark current; shot and read noise; cosmic rays; bleeding of charge
above full well along columns. Then, per amplifier in readout order: gain, crosstalk (from
bright pixels), bias level + fixed column structure + per-row offsets, ADC clip at SATURATE.
The raw header carries the *commanded* pointing; the true boresight differs by ~2" and the
true WCS (TAN-SIP) goes to the truth. docs/raw_format.md describes the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from algorithms import render as rk
from algorithms.render_wcs import pixel_to_sky, sip_header, sky_to_pixel
from config.cameras import Camera, Detector
from state.errors import StorageError
from summit.calibs import DetectorSignature
from summit.fitsio import write_fits
from summit.raw_headers import amp_header, primary_header
from summit.schedule import Visit
from summit.sky import KIND_NAMES, Catalog, Sky, mag_to_njy

BETA = 3.0
POINTING_SIGMA_ARCSEC = 2.0
ROTATION_SIGMA_DEG = 0.003
CROSSTALK_THRESHOLD_ADU = 2000.0


@dataclass(frozen=True)
class Pointing:
    ra: float
    dec: float
    rot: float


@dataclass(frozen=True)
class Truth:
    """What landed on one detector in one visit (positions at mid-exposure, 0-based pixels)."""

    id: NDArray[np.int64]
    kind: NDArray[np.int8]
    ra: NDArray[np.float64]
    dec: NDArray[np.float64]
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    x_start: NDArray[np.float64]
    y_start: NDArray[np.float64]
    x_end: NDArray[np.float64]
    y_end: NDArray[np.float64]
    mag: NDArray[np.float64]
    flux_njy: NDArray[np.float64]
    flux_e: NDArray[np.float64]  # expected electrons above the atmosphere x extinction, no flat
    fwhm_px: NDArray[np.float64]
    wcs: dict[str, float | int | str]

    def rows(self) -> list[tuple[object, ...]]:
        return [
            (int(i), KIND_NAMES[int(k)], *map(float, vals))
            for i, k, *vals in zip(
                self.id,
                self.kind,
                self.ra,
                self.dec,
                self.x,
                self.y,
                self.mag,
                self.flux_njy,
                self.flux_e,
                strict=True,
            )
        ]


class CameraSimulator:
    """Renders raws for a camera looking at a :class:`Sky`; deterministic from ``seed``."""

    def __init__(self, camera: Camera, sky: Sky, seed: int, cache_detectors: int = 9) -> None:
        self.camera, self.sky, self.seed = camera, sky, int(seed)
        self.scale_deg = camera.pixel_scale_arcsec / 3600.0
        self.signature = lru_cache(maxsize=cache_detectors)(self._signature)

    def _signature(self, detector_id: int) -> DetectorSignature:
        return DetectorSignature(self.camera, self.camera.detector(detector_id))

    # -- geometry -------------------------------------------------------------------------
    def true_pointing(self, visit: Visit) -> Pointing:
        rng = np.random.default_rng([self.seed, visit.visit_id, 1])
        dra, ddec = rng.normal(0.0, POINTING_SIGMA_ARCSEC / 3600.0, 2)
        ra = (visit.ra + dra / math.cos(math.radians(visit.dec))) % 360.0
        return Pointing(ra, visit.dec + ddec, visit.rot_sky_pos + rng.normal(0, ROTATION_SIGMA_DEG))

    def wcs_params(self, det: Detector, p: Pointing) -> dict[str, object]:
        """Keyword arguments for :mod:`algorithms.render_wcs` for this detector."""
        mm = self.camera.pixel_size_um / 1000.0
        crpix0 = ((det.nx - 1) / 2 - det.fp_x_mm / mm, (det.ny - 1) / 2 - det.fp_y_mm / mm)
        return {
            "crpix0": crpix0,
            "ra0": p.ra,
            "dec0": p.dec,
            "rot_deg": p.rot,
            "scale_deg": self.scale_deg,
            "k_deg2": self.camera.distortion_k_per_deg2,
        }

    def true_wcs_header(self, visit: Visit, detector_id: int) -> dict[str, float | int | str]:
        det = self.camera.detector(detector_id)
        return sip_header(**self.wcs_params(det, self.true_pointing(visit)))  # type: ignore[arg-type]

    # -- sources --------------------------------------------------------------------------
    def _catalog(self, visit: Visit, det: Detector, wp: dict[str, object]) -> Catalog:
        ra_c, dec_c = pixel_to_sky((det.nx - 1) / 2, (det.ny - 1) / 2, **wp)  # type: ignore[arg-type]
        radius = 0.5 * math.hypot(det.nx, det.ny) * self.scale_deg * 1.02 + 60.0 / 3600.0
        static = self.sky.static_catalog(float(ra_c), float(dec_c), radius)
        moving = self.sky.moving_catalog(float(ra_c), float(dec_c), radius + 0.01, visit.mjd_mid)
        return Catalog.concat([static, moving])

    def footprint_catalog(self, visit: Visit, detector_id: int) -> Catalog:
        """The sky objects the detector may see in the visit (its footprint plus 60\" margin)."""
        det = self.camera.detector(detector_id)
        return self._catalog(visit, det, self.wcs_params(det, self.true_pointing(visit)))

    def truth(self, visit: Visit, detector_id: int) -> Truth:
        """Every source whose light falls on the detector during the visit."""
        det = self.camera.detector(detector_id)
        wp = self.wcs_params(det, self.true_pointing(visit))
        cat = self._catalog(visit, det, wp)
        t0, t1 = visit.mjd_start, visit.mjd_start + visit.exptime / 86400.0
        xs, ys = sky_to_pixel(*self.sky.positions(cat, t0), **wp)  # type: ignore[arg-type]
        xe, ye = sky_to_pixel(*self.sky.positions(cat, t1), **wp)  # type: ignore[arg-type]
        ra, dec = self.sky.positions(cat, visit.mjd_mid)
        xm, ym = sky_to_pixel(ra, dec, **wp)  # type: ignore[arg-type]
        mag = self.sky.magnitudes(cat, visit.band, visit.mjd_mid)
        margin = 30.0
        lo_x, lo_y = np.minimum(xs, xe), np.minimum(ys, ye)
        hi_x, hi_y = np.maximum(xs, xe), np.maximum(ys, ye)
        keep = (hi_x > -margin) & (lo_x < det.nx - 1 + margin) & (hi_y > -margin)
        keep &= (lo_y < det.ny - 1 + margin) & np.isfinite(mag)
        phot = self.camera.photometry
        zp = phot.zeropoint[visit.band] - phot.extinction[visit.band] * (visit.airmass - 1.0)
        flux_e = visit.exptime * 10.0 ** (-0.4 * (mag - zp))
        crpix0 = wp["crpix0"]
        rho = np.hypot(xm - crpix0[0], ym - crpix0[1]) * self.scale_deg  # type: ignore[index]
        edge = rho / self.camera.field_radius_deg
        fwhm = visit.seeing_geom / self.camera.pixel_scale_arcsec * (1.0 + 0.05 * edge**2)
        k = keep
        return Truth(
            cat.id[k],
            cat.kind[k],
            ra[k],
            dec[k],
            xm[k],
            ym[k],
            xs[k],
            ys[k],
            xe[k],
            ye[k],
            mag[k],
            mag_to_njy(mag[k]),
            flux_e[k],
            fwhm[k],
            sip_header(**wp),  # type: ignore[arg-type]
        )

    # -- rendering ------------------------------------------------------------------------
    def electrons(self, visit: Visit, detector_id: int, truth: Truth) -> NDArray[np.float32]:
        """Expected source electrons per pixel (no sky, flat or noise)."""
        det = self.camera.detector(detector_id)
        rng = np.random.default_rng([self.seed, visit.visit_id, 2])
        shake = rng.normal(0.0, 0.015, 2)
        wp = self.wcs_params(det, self.true_pointing(visit))
        cx, cy = wp["crpix0"]  # type: ignore[misc]
        phi = np.arctan2(truth.y - cy, truth.x - cx)
        g = (
            0.03
            * np.hypot(truth.x - cx, truth.y - cy)
            * self.scale_deg
            / self.camera.field_radius_deg
        )
        g1 = -g * np.cos(2 * phi) + shake[0]  # tangential
        g2 = -g * np.sin(2 * phi) + shake[1]
        img = np.zeros((det.ny, det.nx), np.float32)
        rk.render_sources(
            img,
            truth.x_start,
            truth.y_start,
            truth.x_end,
            truth.y_end,
            truth.flux_e.astype(np.float64),
            truth.fwhm_px,
            g1,
            g2,
            BETA,
            0.02,
        )
        return img

    def render(self, visit: Visit, detector_id: int) -> tuple[fits.HDUList, Truth]:
        """The raw FITS of one detector for one visit, and the truth it was made from."""
        cam, det = self.camera, self.camera.detector(detector_id)
        sig = self.signature(detector_id)
        rng = np.random.default_rng([self.seed, visit.visit_id, det.id, 3])
        rk.seed_kernels(int(rng.integers(2**31)))
        truth = self.truth(visit, detector_id)
        src = self.electrons(visit, detector_id, truth)
        phot = cam.photometry
        zp = phot.zeropoint[visit.band] - phot.extinction[visit.band] * (visit.airmass - 1.0)
        sky_e = (
            visit.exptime * 10.0 ** (-0.4 * (visit.sky_brightness - zp)) * cam.pixel_scale_arcsec**2
        )
        grad = rng.normal(0.0, 0.01, 2) * sky_e / max(det.nx, det.ny)
        flat, dark = sig.flat(visit.band), sig.dark
        charge = np.empty_like(src)
        for a in det.amplifiers:
            sl = np.s_[a.y0 : a.y0 + a.ny, a.x0 : a.x0 + a.nx]
            z = rng.standard_normal((a.ny, a.nx), dtype=np.float32)
            sky0 = sky_e + grad[0] * a.x0 + grad[1] * a.y0
            rk.expose(
                src[sl],
                flat[sl],
                dark[sl],
                visit.exptime,
                sky0,
                grad[0],
                grad[1],
                a.read_noise,
                z,
                charge[sl],
            )
        self._cosmic_rays(charge, visit, rng)
        stack = np.zeros((len(det.amplifiers), *det.amplifiers[0].raw_shape), np.float32)
        for a in det.amplifiers:
            rk.bleed(charge, a.full_well, a.x0, a.x0 + a.nx, a.y0, a.y0 + a.ny)
            seg = charge[a.y0 : a.y0 + a.ny, a.x0 : a.x0 + a.nx]
            rk.to_readout(seg, a.gain, a.full_well, a.flip_x, a.flip_y, a.prescan, stack[a.index])
        rk.crosstalk(stack, np.asarray(det.crosstalk), CROSSTALK_THRESHOLD_ADU)
        hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [
            fits.PrimaryHDU(header=primary_header(cam, det, visit, self.wcs_params))
        ]
        for a in det.amplifiers:
            raw = np.empty(a.raw_shape, np.int32)
            rows = rng.normal(0.0, 1.0, a.raw_shape[0]).astype(np.float32)
            rk.digitize(
                stack[a.index],
                a.bias_level,
                sig.bias_columns(a.index),
                rows,
                *sig.bias_glow(a.index),
                a.read_noise / a.gain,
                a.prescan,
                a.nx,
                a.ny,
                a.saturation_adu,
                raw,
            )
            hdus.append(fits.ImageHDU(data=raw, header=amp_header(det, a)))
        return fits.HDUList(hdus), truth

    def _cosmic_rays(
        self, img: NDArray[np.float32], visit: Visit, rng: np.random.Generator
    ) -> None:
        ny, nx = img.shape
        area_cm2 = nx * ny * (self.camera.pixel_size_um * 1e-4) ** 2
        t = visit.exptime + self.camera.readout_time_s
        n = int(rng.poisson(self.camera.cosmic_ray_rate_per_cm2_s * area_cm2 * t))
        cos_z = rng.random(n) ** (1.0 / 3.0)  # flux ~ cos^2 through a horizontal surface
        depth_px = 100.0 / self.camera.pixel_size_um  # 100 um of silicon
        length = np.minimum(depth_px * np.sqrt(1.0 - cos_z**2) / cos_z, 400.0) + 1.0
        path_um = np.hypot(length * self.camera.pixel_size_um, 100.0)
        charge = 80.0 * path_um * rng.lognormal(0.0, 0.3, n)  # ~80 e-/um for a MIP
        rk.add_cosmic_rays(
            img,
            rng.uniform(0, nx, n),
            rng.uniform(0, ny, n),
            rng.uniform(0, 2 * np.pi, n),
            length,
            charge,
        )

    def write_raw(self, visit: Visit, detector_id: int, path: Path) -> Truth:
        """Render and write one raw (with CHECKSUM/DATASUM); returns the truth."""
        hdul, truth = self.render(visit, detector_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_fits(hdul, path)
        except OSError as e:
            raise StorageError(f"cannot write raw {path}: {e}") from e
        return truth


def raw_path(root: Path, visit: Visit, detector_id: int) -> Path:
    """Where a raw goes: ``raws/<day_obs>/<visit_id>/raw_<visit_id>_<det:03d>.fits``."""
    return (
        root
        / "raws"
        / str(visit.day_obs)
        / str(visit.visit_id)
        / (f"raw_{visit.visit_id}_{detector_id:03d}.fits")
    )
