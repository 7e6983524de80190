"""Cutouts as FITS bytes: image (primary HDU, with WCS), VARIANCE and MASK image extensions.

A minimal writer, because astropy's ``HDUList.writeto`` costs about a millisecond per file and
a 40k-alert visit needs 120k cutouts. The output is standard FITS (2880-byte blocks, 80-char
cards, big-endian data) and is read back by ``astropy.io.fits`` in the tests. Each extension
repeats the WCS so any plane can be displayed on the sky on its own.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from state.fits_blocks import BLOCK, data_block, header_block

_BITPIX = {np.dtype(np.float32): -32, np.dtype(np.int32): 32, np.dtype(np.int16): 16}


def _card(key: str, value: object, comment: str = "") -> str:
    if isinstance(value, bool):
        v = f"{'T' if value else 'F':>20}"
    elif isinstance(value, int | np.integer):
        v = f"{int(value):>20d}"
    elif isinstance(value, float | np.floating):
        v = f"{float(value):>20.13G}"
    else:
        v = "'" + str(value).replace("'", "''").ljust(8) + "'"
        v = f"{v:<20}"
    card = f"{key:<8}= {v}"
    if comment:
        card += f" / {comment}"
    return f"{card[:80]:<80}"


@functools.lru_cache(maxsize=64)
def _structure(shape: tuple[int, int], dtype: np.dtype, first: bool, extname: str) -> str:
    """The cards before the WCS, cached: they depend only on shape, type and position."""
    bitpix = _BITPIX[dtype]
    ny, nx = shape
    if first:
        cards = [_card("SIMPLE", True, "conforms to FITS standard")]
    else:
        cards = [_card("XTENSION", "IMAGE", "image extension")]
    cards += [_card("BITPIX", bitpix), _card("NAXIS", 2), _card("NAXIS1", nx), _card("NAXIS2", ny)]
    if first:
        cards.append(_card("EXTEND", True))
    else:
        cards += [_card("PCOUNT", 0), _card("GCOUNT", 1)]
    cards.append(_card("EXTNAME", extname))
    return "".join(cards)


def _hdu(array: np.ndarray, first: bool, extname: str, wcs_text: str) -> bytes:
    header = header_block([_structure(array.shape, array.dtype, first, extname), wcs_text])
    return header + data_block(array)


def wcs_cards(wcs: Mapping[str, float | str]) -> str:
    """FITS WCS cards from keyword -> value (CTYPEi, CRVALi, CRPIXi, CDi_j, ...), as text.

    Build it once per source and pass the text to :func:`cutout_fits` for its three cutouts.
    """
    return "".join(_card(k, v) for k, v in wcs.items())


def tan_wcs(
    ra: float, dec: float, crpix1: float, crpix2: float, cd: tuple[float, float, float, float]
) -> dict[str, float | str]:
    """Keywords of a gnomonic (TAN) WCS with reference (ra, dec) at 1-based (crpix1, crpix2)."""
    return {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "RADESYS": "ICRS",
        "CRVAL1": float(ra),
        "CRVAL2": float(dec),
        "CRPIX1": float(crpix1),
        "CRPIX2": float(crpix2),
        "CD1_1": float(cd[0]),
        "CD1_2": float(cd[1]),
        "CD2_1": float(cd[2]),
        "CD2_2": float(cd[3]),
    }


def cutout_fits(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    wcs: Mapping[str, float | str] | str,
    extra: Mapping[str, float | str] | None = None,
) -> bytes:
    """FITS bytes of one cutout; ``extra`` keywords (e.g. BUNIT, FLUXCAL) go in the primary."""
    image = np.asarray(image, dtype=np.float32)
    variance = np.asarray(variance, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.int32)
    if image.ndim != 2 or image.shape != variance.shape or image.shape != mask.shape:
        raise ValueError("image, variance and mask must be 2-D arrays of one shape")
    wc = wcs if isinstance(wcs, str) else wcs_cards(wcs)
    primary_extra = "".join(_card(k, v) for k, v in (extra or {}).items())
    return (
        _hdu(image, True, "IMAGE", wc + primary_extra)
        + _hdu(variance, False, "VARIANCE", wc)
        + _hdu(mask, False, "MASK", wc)
    )


@dataclass(frozen=True)
class CutoutTemplate:
    """The bytes of :func:`cutout_fits` for many stamps of one shape, from one template.

    Every header is the same except the values of the ``variable`` WCS keywords (CRVAL for
    stamps centred on their sources, CRPIX for stamps cut from one CCD WCS); those are written
    into their fixed 20-character value fields, the data in place, all stamps at once.
    """

    shape: tuple[int, int]
    template: np.ndarray  # uint8, one file
    value_at: dict[str, tuple[int, ...]]  # keyword -> byte offsets of its value fields
    data_at: tuple[int, int, int]  # byte offsets of the image, variance and mask data

    @classmethod
    def build(
        cls,
        shape: tuple[int, int],
        wcs: Mapping[str, float | str],
        variable: tuple[str, ...] = ("CRVAL1", "CRVAL2"),
        extra: Mapping[str, float | str] | None = None,
    ) -> CutoutTemplate:
        missing = [k for k in variable if k not in wcs]
        if missing:
            raise ValueError(f"variable keyword(s) {missing} are not in the WCS")
        wc = wcs_cards({k: (0.0 if k in variable else v) for k, v in wcs.items()})
        primary_extra = "".join(_card(k, v) for k, v in (extra or {}).items())
        zeros = np.zeros(shape, dtype=np.float32)
        hdus = [
            _hdu(zeros, True, "IMAGE", wc + primary_extra),
            _hdu(zeros, False, "VARIANCE", wc),
            _hdu(zeros.astype(np.int32), False, "MASK", wc),
        ]
        starts = np.cumsum([0] + [len(h) for h in hdus[:-1]]).tolist()
        data_at = []
        value_at: dict[str, list[int]] = {k: [] for k in variable}
        for start, hdu in zip(starts, hdus, strict=True):
            text = hdu.decode("ascii", errors="replace")
            end = next(i for i in range(0, len(text), 80) if text.startswith("END     ", i))
            data_at.append(start + end + 80 + (-(end + 80) % BLOCK))
            for k in variable:
                card = next(i for i in range(0, end, 80) if text.startswith(f"{k:<8}= ", i))
                value_at[k].append(start + card + 10)
        template = np.frombuffer(b"".join(hdus), dtype=np.uint8)
        return cls(shape, template, {k: tuple(v) for k, v in value_at.items()}, tuple(data_at))  # type: ignore[arg-type]

    @property
    def nbytes(self) -> int:
        return len(self.template)

    def render(
        self,
        images: np.ndarray,
        variances: np.ndarray,
        masks: np.ndarray,
        values: Mapping[str, np.ndarray],
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n, nbytes) uint8: row k is the FITS file of stamp k (the same bytes as
        :func:`cutout_fits` with the ``variable`` keywords set from ``values``).

        ``out``: a reusable uint8 buffer of at least n rows (fresh pages cost a page fault
        each, which on a busy host is most of the time of a fresh allocation)."""
        n = len(images)
        expect = (n, *self.shape)
        for name, arr in (("images", images), ("variances", variances), ("masks", masks)):
            if np.shape(arr) != expect:
                raise ValueError(f"{name} must have shape {expect}, got {np.shape(arr)}")
        if set(values) != set(self.value_at):
            raise ValueError(f"values must give exactly {sorted(self.value_at)}")
        if out is None:
            out = np.empty((n, self.nbytes), dtype=np.uint8)
        elif out.dtype != np.uint8 or out.ndim != 2 or out.shape[1] != self.nbytes:
            raise ValueError(f"out must be a uint8 array of rows of {self.nbytes} bytes")
        elif len(out) < n:
            raise ValueError(f"out has {len(out)} rows, {n} needed")
        out = out[:n]
        out[:] = self.template
        size = self.shape[0] * self.shape[1] * 4
        for at, arr, dt in zip(
            self.data_at, (images, variances, masks), (">f4", ">f4", ">i4"), strict=True
        ):
            out[:, at : at + size] = (
                np.ascontiguousarray(arr, dtype=dt).view(np.uint8).reshape(n, size)
            )
        for key, offsets in self.value_at.items():
            text = "".join(f"{float(v):>20.13G}"[:20] for v in np.asarray(values[key]).tolist())
            field = np.frombuffer(text.encode("ascii"), dtype=np.uint8).reshape(n, 20)
            for at in offsets:
                out[:, at : at + 20] = field
        return out
