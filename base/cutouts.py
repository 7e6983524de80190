"""FITS bytes for DIASource cutouts (image, variance, mask and PSF HDUs with WCS)."""

from __future__ import annotations

import io

import numpy as np
from astropy.io import fits

from algorithms import mask as mk
from algorithms.cutouts import Cutout


def cutout_to_fits(cutout: Cutout, extra: dict[str, object] | None = None) -> bytes:
    """An afw-like Exposure file: primary (empty) + IMAGE, MASK, VARIANCE (+ PSF) extensions.

    Every image HDU carries the cutout's WCS; the mask HDU names its planes (``MP_*``).
    """
    wcs_cards = cutout.wcs.to_header()
    primary = fits.PrimaryHDU()
    for k, v in (extra or {}).items():
        primary.header[k] = v
    primary.header["LTV1"] = -cutout.x0
    primary.header["LTV2"] = -cutout.y0
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [primary]
    planes = (
        ("IMAGE", cutout.image.astype(np.float32)),
        ("MASK", cutout.mask.astype(np.int32)),
        ("VARIANCE", cutout.variance.astype(np.float32)),
    )
    for name, data in planes:
        hdu = fits.ImageHDU(data=data, name=name)
        for k, v in wcs_cards.items():
            hdu.header[k] = v
        if name == "MASK":
            for k, v in mk.header_cards().items():
                hdu.header[k if len(k) <= 8 else f"HIERARCH {k}"] = v
        if name == "IMAGE":
            hdu.header["BUNIT"] = "electron"
        hdus.append(hdu)
    if cutout.psf is not None:
        hdus.append(fits.ImageHDU(data=cutout.psf.astype(np.float32), name="PSF"))
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf, output_verify="silentfix")
    return buf.getvalue()
