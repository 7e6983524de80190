"""The hand-written cutout FITS: the same file astropy's HDU machinery writes, read back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits

from algorithms import mask as mk
from algorithms.cutouts import Cutout
from algorithms.wcs import TanSipWcs
from base.cutouts import cutout_to_fits


def _astropy_fits(cutout: Cutout, extra: dict[str, object]) -> bytes:
    """The cutout as astropy's own HDUs write it (the writer this module replaced)."""
    primary = fits.PrimaryHDU()
    for k, v in extra.items():
        primary.header[k] = v
    primary.header["LTV1"] = -cutout.x0
    primary.header["LTV2"] = -cutout.y0
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [primary]
    for name, data in (
        ("IMAGE", cutout.image.astype(np.float32)),
        ("MASK", cutout.mask.astype(np.int32)),
        ("VARIANCE", cutout.variance.astype(np.float32)),
    ):
        hdu = fits.ImageHDU(data=data, name=name)
        for k, v in cutout.wcs.to_header().items():
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


def _cutout(seed: int, *, psf: bool) -> Cutout:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, (33, 35)).astype(np.float32)
    image[0, :4] = np.nan  # off the parent image
    wcs = TanSipWcs(
        crpix=(16.3, -12.7), crval=(150.123456789, -30.5),
        cd=np.array([[-5.5e-5, 1e-7], [2e-7, 5.5e-5]]),
        sip_a={(2, 0): 1.5e-7, (0, 2): -3e-8}, sip_b={(1, 1): 2.5e-8},
    )  # fmt: skip
    return Cutout(
        image=image,
        variance=rng.uniform(20, 30, image.shape).astype(np.float32),
        mask=rng.integers(0, 2**11, image.shape).astype(mk.MASK_DTYPE),
        wcs=wcs,
        x0=-3,
        y0=1021,
        psf=rng.uniform(0, 1, (21, 21)) if psf else None,
    )


@pytest.mark.parametrize("psf", [True, False])
def test_cutout_fits_reads_back_as_astropy_writes_it(psf: bool) -> None:
    cutout = _cutout(3, psf=psf)
    extra = {"VISIT": 2025050500001, "DETECTOR": 4, "DIASRCID": np.int64(123456789012)}
    ours, theirs = cutout_to_fits(cutout, extra), _astropy_fits(cutout, extra)
    assert len(ours) % 2880 == 0
    with fits.open(io.BytesIO(ours)) as a, fits.open(io.BytesIO(theirs)) as b:
        a.verify("exception")
        assert [h.name for h in a] == [h.name for h in b]
        for ha, hb in zip(a, b, strict=True):
            assert dict(ha.header) == dict(hb.header)
            if hb.data is None:
                assert ha.data is None
            else:
                assert ha.data.dtype == hb.data.dtype
                np.testing.assert_array_equal(ha.data, hb.data)


def test_cutout_fits_refuses_a_non_finite_header_value() -> None:
    cutout = _cutout(4, psf=False)
    with pytest.raises(ValueError):
        cutout_to_fits(cutout, {"SEEING": float("nan")})
