"""The camera's true instrument signature per detector, and the master calibrations made from it.

The truth (what the simulated hardware does) is deterministic from the camera seed and the
detector id: flat-field response (vignetting, band-dependent QE, low-frequency structure, ITL
tree rings, dust donuts, 0.5 % pixel response non-uniformity, dead columns), dark current
(with hot pixels and hot columns) and the fixed bias structure of each amplifier. Master
calibrations written for the pipeline are these truths plus the noise of a finite combine
(20 frames), in assembled-CCD coordinates: see docs/simulation.md for the layout.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from config.cameras import BANDS, Camera, Detector
from state.errors import StorageError
from summit.fitsio import write_fits

BPM_BAD, BPM_HOT = 1, 2
N_COMBINE = 20
_QE_SPREAD = {"u": 0.04, "g": 0.02, "r": 0.015, "i": 0.015, "z": 0.02, "y": 0.03}


class DetectorSignature:
    """True flat, dark and bias structure of one detector (arrays cached on first use)."""

    def __init__(self, camera: Camera, detector: Detector) -> None:
        self.camera, self.det = camera, detector
        self._seed = [camera.seed, detector.id, 31337]
        self.flat = lru_cache(maxsize=6)(self._flat)

    def _rng(self, what: int) -> np.random.Generator:
        return np.random.default_rng([*self._seed, what])

    @property
    def prnu(self) -> NDArray[np.float32]:
        if not hasattr(self, "_prnu"):
            z = self._rng(1).standard_normal((self.det.ny, self.det.nx), dtype=np.float32)
            self._prnu = 1.0 + np.float32(0.005) * z
        return self._prnu

    def _flat(self, band: str) -> NDArray[np.float32]:
        d, cam = self.det, self.camera
        rng = self._rng(2 + BANDS.index(band))
        mm = cam.pixel_size_um / 1000.0
        fx = d.fp_x_mm + (np.arange(d.nx, dtype=np.float32) - (d.nx - 1) / 2) * mm
        fy = d.fp_y_mm + (np.arange(d.ny, dtype=np.float32) - (d.ny - 1) / 2) * mm
        r_max_mm = cam.field_radius_deg / (cam.pixel_scale_arcsec / 3600.0) * mm
        vignette = 1.0 - 0.12 * (fy[:, None] ** 2 + fx[None, :] ** 2) / r_max_mm**2
        qe = 1.0 + rng.normal(0.0, _QE_SPREAD[band])
        lx, ly, px, py = rng.uniform(800, 3000), rng.uniform(800, 3000), *rng.uniform(0, 6.3, 2)
        xs, ys = np.arange(d.nx, dtype=np.float32), np.arange(d.ny, dtype=np.float32)
        low = (
            1.0
            + 0.01
            * np.sin(2 * np.pi * ys / ly + py)[:, None]
            * np.cos(2 * np.pi * xs / lx + px)[None, :]
        )
        flat = (vignette * low * qe).astype(np.float32) * self.prnu
        if d.vendor == "ITL":  # tree rings centred off the corner of the CCD
            cx, cy = -600.0, -600.0
            rr = np.sqrt((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2)
            flat *= 1.0 + 0.003 * np.sin(2 * np.pi * rr / 45.0).astype(np.float32)
        drng = self._rng(9)  # dust donuts: same positions in every band
        for _ in range(drng.integers(1, 4)):
            x0, y0 = drng.uniform(0, d.nx), drng.uniform(0, d.ny)
            rad = drng.uniform(25, 70)
            sl = np.s_[
                max(0, int(y0 - rad - 8)) : min(d.ny, int(y0 + rad + 8)),
                max(0, int(x0 - rad - 8)) : min(d.nx, int(x0 + rad + 8)),
            ]
            yy, xx = np.mgrid[sl]
            ring = np.exp(-0.5 * ((np.hypot(xx - x0, yy - y0) - rad) / 3.0) ** 2)
            flat[sl] *= (1.0 - 0.03 * ring).astype(np.float32)
        for x, y0, y1, kind in d.defects.bad_columns:
            if kind == "dead":
                flat[y0:y1, x] *= 0.05
        return flat

    @property
    def dark(self) -> NDArray[np.float32]:
        """Dark current, e-/s per pixel."""
        if not hasattr(self, "_dark"):
            d = self.det
            dark = np.full((d.ny, d.nx), self.camera.dark_current_e_per_s, np.float32)
            for x, y0, y1, kind in d.defects.bad_columns:
                if kind == "hot":
                    dark[y0:y1, x] += 15.0
            for x, y, rate in d.defects.hot_pixels:
                dark[y, x] += rate
            self._dark = dark
        return self._dark

    def bias_columns(self, amp_index: int) -> NDArray[np.float32]:
        """Fixed bias structure (ADU) along the raw columns of an amplifier, in readout order."""
        amp = self.det.amplifiers[amp_index]
        rng = self._rng(100 + amp_index)
        cols = np.arange(amp.raw_shape[1], dtype=np.float32)
        ramp = rng.uniform(5.0, 30.0) * np.exp(-cols / rng.uniform(3.0, 20.0))
        return (ramp + rng.normal(0.0, 0.3, cols.size)).astype(np.float32)

    def bias_glow(self, amp_index: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Fixed 2-D bias structure of the data region (ADU), readout order: rows x cols."""
        amp = self.det.amplifiers[amp_index]
        rng = self._rng(150 + amp_index)
        rows = rng.uniform(2.0, 8.0) * np.exp(-np.arange(amp.ny) / rng.uniform(20.0, 80.0))
        cols = 1.0 + 0.3 * np.arange(amp.nx) / amp.nx
        return rows.astype(np.float32), cols.astype(np.float32)

    def bpm(self) -> NDArray[np.uint8]:
        d = self.det
        mask = np.zeros((d.ny, d.nx), np.uint8)
        for x, y0, y1, kind in d.defects.bad_columns:
            mask[y0:y1, x] |= BPM_BAD if kind == "dead" else BPM_HOT
        for x, y, rate in d.defects.hot_pixels:
            if rate * 30.0 > 5.0 * 6.0:  # above five sigma of read noise in a 30 s visit
                mask[y, x] |= BPM_HOT
        return mask

    def master_bias(self) -> NDArray[np.float32]:
        """Residual bias (e-) after serial (per row) and parallel (per column) overscan
        subtraction, assembled: the data-region bias glow times the gain."""
        d = self.det
        out = np.empty((d.ny, d.nx), np.float32)
        for a in d.amplifiers:
            rows, cols = self.bias_glow(a.index)
            data = np.outer(rows, cols) * np.float32(a.gain)
            if a.flip_x:
                data = data[:, ::-1]
            if a.flip_y:
                data = data[::-1, :]
            out[a.y0 : a.y0 + a.ny, a.x0 : a.x0 + a.nx] = data
        noise = self._rng(200).standard_normal(out.shape, dtype=np.float32)
        rn = np.array([a.read_noise for a in d.amplifiers]).mean()
        return out + np.float32(rn / np.sqrt(N_COMBINE)) * noise


def write_master_calibs(sig: DetectorSignature, directory: Path, bands: tuple[str, ...]) -> None:
    """Write bias, dark, flat_<band>, bpm and crosstalk of one detector into ``directory``."""
    d = sig.det
    rng = np.random.default_rng([*sig._seed, 300])
    header = {"DETECTOR": d.id, "DETNAME": d.name, "CAMERA": sig.camera.name}
    products: dict[str, tuple[NDArray, dict[str, object]]] = {
        "bias": (sig.master_bias(), {"BUNIT": "electron", "CALIB": "bias", "NCOMBINE": N_COMBINE}),
        "dark": (
            sig.dark
            + rng.normal(0.0, 6.0 / 300.0 / np.sqrt(N_COMBINE), sig.dark.shape).astype(np.float32),
            {"BUNIT": "electron/s", "CALIB": "dark", "NCOMBINE": N_COMBINE, "EXPTIME": 300.0},
        ),
        "bpm": (sig.bpm(), {"CALIB": "bpm", "BPM_BAD": BPM_BAD, "BPM_HOT": BPM_HOT}),
    }
    for band in bands:
        f = sig.flat(band)
        f = f / np.float32(np.median(f))
        noise = rng.standard_normal(f.shape, dtype=np.float32) / np.float32(
            np.sqrt(N_COMBINE * 5e4)
        )
        products[f"flat_{band}"] = (f * (1 + noise), {"CALIB": "flat", "BAND": band})
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, (data, extra) in products.items():
            hdu = fits.PrimaryHDU(data=data)
            hdu.header.update({**header, **extra})
            write_fits(fits.HDUList([hdu]), directory / f"{name}.fits")
        xt = {
            "convention": "victim_adu += coefficients[source][victim] * source_signal_adu, "
            "same raw (readout-order) pixel index, signal = raw - bias",
            "amplifiers": [a.name for a in d.amplifiers],
            "coefficients": [list(row) for row in d.crosstalk],
        }
        (directory / "crosstalk.json").write_text(json.dumps(xt, indent=1))
    except OSError as e:
        raise StorageError(f"cannot write calibrations in {directory}: {e}") from e
