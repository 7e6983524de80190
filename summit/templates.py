"""Deep, transient-free templates: one per (field, band, detector), in nJy, with variance and PSF.

A template stands for the coadd of ``n_epochs`` 30 s visits in dark sky at airmass 1 with a
uniform Moffat PSF (``fwhm_arcsec``). It holds the static sky only (stars; variable stars at
their mean magnitude; no transients, no moving objects), sky-subtracted, on the detector's
nominal grid for the field's pointing (commanded boresight and rotSkyPos) widened by
``margin`` pixels on each side, so that a visit of the field falls inside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from algorithms import render as rk
from algorithms.render_wcs import pixel_to_sky, sip_header, sky_to_pixel
from config.cameras import Camera
from state.errors import StorageError
from summit.camera import CameraSimulator, Pointing
from summit.fitsio import write_fits
from summit.schedule import Visit
from summit.sky import AB_NJY_ZERO, mag_to_njy

PSF_HALF = 20
#: The template stands for this many visits of this length (``render_template``).
TEMPLATE_EPOCHS = 20
TEMPLATE_EPOCH_S = 30.0
# Lossy float compression as Rubin ships coadds: quantized to 1/16 of the noise, fixed dither.
_RICE = {"compression_type": "RICE_1", "quantize_level": 16.0, "dither_seed": 1}


def psf_image(fwhm_px: float, beta: float = 3.0) -> NDArray[np.float32]:
    """A normalized (sum 1) centred Moffat image of (2 * PSF_HALF + 1)^2 pixels."""
    img = np.zeros((2 * PSF_HALF + 1, 2 * PSF_HALF + 1), np.float32)
    one = np.array([float(PSF_HALF)])
    rk.render_sources(
        img,
        one,
        one,
        one,
        one,
        np.array([1.0]),
        np.array([fwhm_px]),
        np.zeros(1),
        np.zeros(1),
        beta,
        1e-9,
    )
    return img / img.sum()


def _njy_per_e(cam: Camera, band: str) -> float:
    return float(10.0 ** ((AB_NJY_ZERO - cam.photometry.zeropoint[band]) / 2.5) / TEMPLATE_EPOCH_S)


def _sky_and_read_e(cam: Camera, detector_id: int, band: str) -> tuple[float, float]:
    """Dark-sky electrons per pixel of one template epoch, and the mean read-noise variance."""
    zp = cam.photometry.zeropoint[band]
    sky_e = (
        TEMPLATE_EPOCH_S
        * 10 ** (-0.4 * (cam.photometry.dark_sky[band] - zp))
        * cam.pixel_scale_arcsec**2
    )
    rn2 = float(np.mean([a.read_noise**2 for a in cam.detector(detector_id).amplifiers]))
    return sky_e, rn2


def template_sky_variance(
    cam: Camera, detector_id: int, band: str, n_epochs: int = TEMPLATE_EPOCHS
) -> float:
    """The template's per-pixel variance away from sources (nJy²): the dark sky and read noise
    of ``n_epochs`` visits, averaged. What a difference image inherits from its template."""
    sky_e, rn2 = _sky_and_read_e(cam, detector_id, band)
    return (sky_e + rn2) / n_epochs * _njy_per_e(cam, band) ** 2


def render_template(
    sim: CameraSimulator,
    visit: Visit,
    detector_id: int,
    *,
    n_epochs: int = TEMPLATE_EPOCHS,
    fwhm_arcsec: float = 0.8,
    margin: int = 64,
) -> fits.HDUList:
    """The template of ``visit``'s field and band for one detector."""
    cam, det = sim.camera, sim.camera.detector(detector_id)
    wp = sim.wcs_params(det, Pointing(visit.ra, visit.dec, visit.rot_sky_pos))
    cx, cy = wp["crpix0"]  # type: ignore[misc]
    wp["crpix0"] = (cx + margin, cy + margin)
    ny, nx = det.ny + 2 * margin, det.nx + 2 * margin
    ra_c, dec_c = pixel_to_sky((nx - 1) / 2, (ny - 1) / 2, **wp)  # type: ignore[arg-type]
    radius = 0.5 * np.hypot(nx, ny) * sim.scale_deg * 1.05
    cat = sim.sky.static_catalog(float(ra_c), float(dec_c), radius, transients=False)
    x, y = sky_to_pixel(cat.ra, cat.dec, **wp)  # type: ignore[arg-type]
    mag = cat.mag[:, "ugrizy".index(visit.band)]
    keep = (x > -50) & (x < nx + 50) & (y > -50) & (y < ny + 50)
    flux = mag_to_njy(mag[keep])
    fwhm_px = fwhm_arcsec / cam.pixel_scale_arcsec
    n = int(keep.sum())
    img = np.zeros((ny, nx), np.float32)
    rk.render_sources(
        img,
        x[keep],
        y[keep],
        x[keep],
        y[keep],
        flux,
        np.full(n, fwhm_px),
        np.zeros(n),
        np.zeros(n),
        3.0,
        0.001,
    )
    njy_per_e = _njy_per_e(cam, visit.band)
    sky_e, rn2 = _sky_and_read_e(cam, detector_id, visit.band)
    variance = ((sky_e + rn2 + img / njy_per_e) / n_epochs * njy_per_e**2).astype(np.float32)
    rng = np.random.default_rng([sim.seed, visit.field_id, "ugrizy".index(visit.band), det.id, 5])
    img += np.sqrt(variance) * rng.standard_normal((ny, nx), dtype=np.float32)
    head = fits.Header()
    head.update(sip_header(**wp))  # type: ignore[arg-type]
    for key, value in {
        "CAMERA": cam.name,
        "DETECTOR": det.id,
        "DETNAME": det.name,
        "BAND": visit.band,
        "FIELDID": visit.field_id,
        "FIELDRA": visit.ra,
        "FIELDDEC": visit.dec,
        "ROTPA": visit.rot_sky_pos,
        "BUNIT": "nJy",
        "NEPOCHS": n_epochs,
        "PSFFWHM": fwhm_arcsec,
        "MARGIN": margin,
        "PHOTZP": AB_NJY_ZERO,
    }.items():
        head[key] = value
    return fits.HDUList(
        [
            fits.PrimaryHDU(header=head),
            fits.CompImageHDU(img, header=head, name="IMAGE", **_RICE),
            fits.CompImageHDU(variance, name="VARIANCE", **_RICE),
            fits.ImageHDU(psf_image(fwhm_px), name="PSF"),
        ]
    )


def template_path(root: Path, visit: Visit, detector_id: int) -> Path:
    return (
        root
        / "templates"
        / visit.band
        / f"field{visit.field_id:04d}"
        / f"det{detector_id:03d}.fits"
    )


def write_template(sim: CameraSimulator, visit: Visit, detector_id: int, root: Path) -> Path:
    path = template_path(root, visit, detector_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_fits(render_template(sim, visit, detector_id), path)
    except OSError as e:
        raise StorageError(f"cannot write template {path}: {e}") from e
    return path
