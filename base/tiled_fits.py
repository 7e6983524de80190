"""Reading tile-compressed FITS images, the common case through ``algorithms.rice``.

The common case is what ``summit.templates`` and astropy's defaults write: RICE_1 tiles of
whole rows, 4-byte pixels, float pixels quantized without dithering (or plain integers).
Its tile table and heap are read straight from the file (where the HDU's data begin comes
from astropy's header parsing), and all tiles are decoded in one compiled call; a tile stored
losslessly (gzip) is inflated here. Anything else (other compressions, dithered quantization,
blank values per tile, 3-D images) is read by astropy, so every valid file reads.
"""

from __future__ import annotations

import gzip
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from algorithms.rice import rice_decode, rice_decode_quantized

#: numpy type of a one-element binary-table field by TFORM letter (P/Q: count and offset).
_FIELD: dict[str, Any] = {"B": ">u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4",
                          "D": ">f8", "P": (">i4", 2), "Q": (">i8", 2)}  # fmt: skip
_COLUMNS = {"COMPRESSED_DATA", "GZIP_COMPRESSED_DATA", "ZSCALE", "ZZERO"}


@dataclass(frozen=True)
class _Layout:
    shape: tuple[int, int]
    tile_rows: int
    blocksize: int
    quantized: bool
    blank: int | None


def _setting(header: fits.Header, name: str, default: int) -> int:
    i = 1
    while f"ZNAME{i}" in header:
        if str(header[f"ZNAME{i}"]).strip().upper() == name:
            return int(header[f"ZVAL{i}"])
        i += 1
    return default


def _layout(header: fits.Header) -> _Layout | None:
    """The image's layout when this module decodes it, else None (astropy does)."""
    if str(header.get("ZCMPTYPE", "")).strip() not in ("RICE_1", "RICE_ONE"):
        return None
    if header.get("ZNAXIS") != 2 or header.get("ZBITPIX") not in (-32, 32):
        return None
    nx, ny = int(header["ZNAXIS1"]), int(header["ZNAXIS2"])
    if int(header.get("ZTILE1", nx)) != nx or _setting(header, "BYTEPIX", 4) != 4:
        return None
    quantized = header["ZBITPIX"] == -32
    if quantized and str(header.get("ZQUANTIZ", "NO_DITHER")).strip() != "NO_DITHER":
        return None
    blank = header.get("ZBLANK")
    if "BLANK" in header or not (blank is None or isinstance(blank, int)):
        return None
    names = {str(header.get(f"TTYPE{i}", "")).strip() for i in range(1, header["TFIELDS"] + 1)}
    if "COMPRESSED_DATA" not in names or not names <= _COLUMNS:
        return None
    if quantized != ({"ZSCALE", "ZZERO"} <= names):
        return None
    tile_rows = int(header.get("ZTILE2", 1))
    return _Layout((ny, nx), tile_rows, _setting(header, "BLOCKSIZE", 32), quantized, blank)


def _table_dtype(header: fits.Header) -> np.dtype[Any] | None:
    fields = []
    for i in range(1, header["TFIELDS"] + 1):
        form = str(header[f"TFORM{i}"]).strip()
        repeat = form[: len(form) - len(form.lstrip("0123456789"))]
        letter = form[len(repeat) : len(repeat) + 1]
        if letter not in _FIELD or int(repeat or 1) != 1:
            return None
        fields.append((str(header[f"TTYPE{i}"]).strip(), _FIELD[letter]))
    dtype = np.dtype(fields)
    return dtype if dtype.itemsize == header["NAXIS1"] else None


def _decode(f: BinaryIO, header: fits.Header, data_at: int, lay: _Layout) -> NDArray[Any] | None:
    dtype = _table_dtype(header)
    if dtype is None:
        return None
    rows = int(header["NAXIS2"])
    table_bytes = dtype.itemsize * rows
    heap_at = int(header.get("THEAP", table_bytes))
    heap_size = int(header["PCOUNT"]) - (heap_at - table_bytes)
    f.seek(data_at)
    raw_table = f.read(table_bytes)
    f.seek(data_at + heap_at)
    heap = np.frombuffer(f.read(heap_size), dtype=np.uint8)
    if len(raw_table) != table_bytes or heap.size != heap_size:
        raise ValueError("the tile table or heap is truncated")
    table = np.frombuffer(raw_table, dtype=dtype)
    tile_pixels, n = lay.tile_rows * lay.shape[1], lay.shape[0] * lay.shape[1]
    desc = table["COMPRESSED_DATA"].astype(np.int64)
    out: NDArray[Any] = (
        rice_decode_quantized(heap, desc[:, 1], desc[:, 0], tile_pixels, n, table["ZSCALE"],
                              table["ZZERO"], lay.blank, lay.blocksize)
        if lay.quantized  # an integer image's blank value stays as it is, as astropy reads it
        else rice_decode(heap, desc[:, 1], desc[:, 0], tile_pixels, n, lay.blocksize)
    )  # fmt: skip
    for t in np.flatnonzero(desc[:, 0] == 0):
        if "GZIP_COMPRESSED_DATA" not in (table.dtype.names or ()):
            raise ValueError(f"tile {t} has no data")
        length, offset = (int(v) for v in table["GZIP_COMPRESSED_DATA"][t])
        if offset < 0 or length < 0 or offset + length > heap.size:
            raise ValueError(f"tile {t}: its lossless data lie outside the heap")
        lossless = gzip.decompress(heap[offset : offset + length].tobytes())
        tile = np.frombuffer(lossless, ">f4" if lay.quantized else ">i4")
        first = t * tile_pixels
        if tile.size != min(tile_pixels, n - first):
            raise ValueError(f"tile {t}: {tile.size} pixels stored losslessly")
        out[first : first + tile.size] = tile
    return out.reshape(lay.shape)


def read_compressed_images(path: Path, extnames: tuple[str, ...]) -> dict[str, NDArray[Any]]:
    """The pixels of the tile-compressed image HDUs ``extnames`` of ``path``: float32 for
    quantized floats, int32 for 4-byte integers, astropy's type for what astropy reads.

    Raises ``OSError``, ``ValueError`` or ``KeyError`` on a missing, truncated or corrupt HDU.
    """
    images: dict[str, NDArray[Any]] = {}
    with fits.open(path, disable_image_compression=True, memmap=False) as h, open(path, "rb") as f:
        for name in extnames:
            hdu = h[name]
            layout = _layout(hdu.header) if isinstance(hdu, fits.BinTableHDU) else None
            if layout is None:
                continue
            data_at = h.fileinfo(h.index_of(name))["datLoc"]
            try:
                decoded = _decode(f, hdu.header, data_at, layout)
            except (zlib.error, EOFError) as e:
                raise ValueError(f"{name}: a losslessly stored tile is corrupt: {e}") from e
            if decoded is not None:
                images[name] = decoded
    if len(images) < len(extnames):
        with fits.open(path, memmap=False) as h:
            images |= {n: np.asarray(h[n].data) for n in extnames if n not in images}
    return images


def warm_up_decoder() -> None:
    """Compile (or load from numba's cache) the decoder on a small template-like image, so
    that a night's first preload does not; raises ``ValueError`` if it reads it wrong."""
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 5.0, (8, 64)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="dmcs-rice-") as tmp:
        path = Path(tmp) / "warm.fits"
        hdu = fits.CompImageHDU(image, name="IMAGE", compression_type="RICE_1", quantize_level=16.0)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        decoded = read_compressed_images(path, ("IMAGE",))["IMAGE"]
        with fits.open(path) as h:
            if not np.array_equal(decoded, h["IMAGE"].data):
                raise ValueError("the tile decoder does not read what astropy reads")
