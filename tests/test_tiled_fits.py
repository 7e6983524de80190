"""Tile-compressed FITS images read by ``algorithms.rice`` / ``base.tiled_fits``: the same
pixels as astropy's reading, bit for bit, for every layout astropy writes; the layouts the
decoder does not take go to astropy; corrupt streams raise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from algorithms.rice import rice_decode, rice_decode_quantized
from base.tiled_fits import _layout, read_compressed_images

SEED = 20261207


def _sky(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sky noise with stars and a saturated core, as templates have (all Rice code kinds)."""
    img = rng.normal(1000.0, 30.0, shape).astype(np.float32)
    y, x = np.mgrid[: shape[0], : shape[1]]
    for cy, cx, flux in ((10, 20, 5e5), (40, 70, 3e7), (25, 5, 2e3)):
        img += (flux * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 4.0)).astype(np.float32)
    return img


def _write(path: Path, image: np.ndarray, **compression: object) -> Path:
    fits.HDUList(
        [fits.PrimaryHDU(), fits.CompImageHDU(image, name="IMAGE", **compression)]  # type: ignore[arg-type]
    ).writeto(path, overwrite=True)
    return path


def _astropy(path: Path) -> np.ndarray:
    with fits.open(path) as h:
        return np.asarray(h["IMAGE"].data)


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize(
    "case",
    [
        {"quantize_level": 16.0},  # summit.templates' setting: one-row tiles
        {"quantize_level": 4.0, "tile_shape": (7, 96)},  # several rows a tile, a short last one
        {"quantize_level": 16.0, "nan": True},  # blank pixels (ZBLANK)
        {"quantize_level": 16.0, "flat_row": True},  # a constant row: low-entropy blocks
        {"int32": True},  # plain integers, full range: raw 32-bit blocks
        {"quantize_level": 16.0, "dither": "SUBTRACTIVE_DITHER_1", "astropy": True},
        {"quantize_level": 16.0, "tile_shape": (16, 16), "astropy": True},  # not whole rows
        {"compression_type": "GZIP_1", "astropy": True},
    ],
)
def test_pixels_are_astropys_bit_for_bit(case: dict[str, object], tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    image: np.ndarray
    if case.get("int32"):
        image = rng.integers(-(2**31), 2**31 - 1, (50, 96), dtype=np.int64).astype(np.int32)
        image[:25] = rng.integers(-40, 40, (25, 96))
    else:
        image = _sky((50, 96), rng)
    if case.get("nan"):
        image[3, 4:9] = np.nan
    if case.get("flat_row"):
        image[7] = 1234.5
    options: dict[str, object] = {"compression_type": case.get("compression_type", "RICE_1")}
    if "quantize_level" in case:
        options["quantize_level"] = case["quantize_level"]
    if "tile_shape" in case:
        options["tile_shape"] = case["tile_shape"]
    if "dither" in case:
        options["quantize_method"] = {"SUBTRACTIVE_DITHER_1": 1}[str(case["dither"])]
    path = _write(tmp_path / "image.fits", image, **options)
    with fits.open(path, disable_image_compression=True) as h:
        assert (_layout(h["IMAGE"].header) is None) == bool(case.get("astropy"))
    mine = read_compressed_images(path, ("IMAGE",))["IMAGE"]
    _same_bits(mine, _astropy(path))
    if case.get("nan"):
        assert np.isnan(mine[3, 4:9]).all() and np.isfinite(mine[3, 9:]).all()


def test_a_tile_stored_losslessly_is_read_from_its_gzip_column(tmp_path: Path) -> None:
    """astropy stores a tile it cannot quantize (no noise to measure) gzipped as floats."""
    image = _sky((12, 40), np.random.default_rng(SEED))
    image[5] = np.float32(3.25)
    path = _write(tmp_path / "image.fits", image, compression_type="RICE_1", quantize_level=16.0)
    with fits.open(path, disable_image_compression=True) as h:
        stored = [len(v) for v in h["IMAGE"].data["GZIP_COMPRESSED_DATA"]]
    assert stored[5] > 0, "the constant row went to the lossless column"
    mine = read_compressed_images(path, ("IMAGE",))["IMAGE"]
    _same_bits(mine, _astropy(path))
    assert mine[5].tolist() == [3.25] * 40


def test_a_template_as_the_simulator_writes_it(dense_mini_night: Path) -> None:
    path = next(dense_mini_night.glob("templates/*/*/det*.fits"))
    planes = read_compressed_images(path, ("IMAGE", "VARIANCE"))
    with fits.open(path) as h:
        for name in ("IMAGE", "VARIANCE"):
            _same_bits(planes[name], np.asarray(h[name].data))


def _one_row_stream(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    image = _sky((3, 64), np.random.default_rng(SEED))
    path = _write(tmp_path / "image.fits", image, compression_type="RICE_1", quantize_level=16.0)
    with fits.open(path, disable_image_compression=True) as h:
        table = h["IMAGE"].data
        streams = [np.asarray(v, dtype=np.uint8) for v in table["COMPRESSED_DATA"]]
        scale, zero = np.asarray(table["ZSCALE"]), np.asarray(table["ZZERO"])
    heap = np.concatenate(streams)
    lengths = np.array([s.size for s in streams])
    return heap, lengths, scale, zero


def test_corrupt_or_short_streams_raise(tmp_path: Path) -> None:
    heap, lengths, scale, zero = _one_row_stream(tmp_path)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    good = rice_decode_quantized(heap, offsets, lengths, 64, 192, scale, zero)
    assert np.isfinite(good).all()
    short = lengths.copy()
    short[1] = 6
    with pytest.raises(ValueError, match="tile 1: its compressed stream is corrupt"):
        rice_decode(heap, offsets, short, 64, 192)
    with pytest.raises(ValueError, match="outside the heap"):
        rice_decode(heap, offsets + 5, lengths, 64, 192)
    with pytest.raises(ValueError, match="do not cover"):
        rice_decode(heap, offsets, lengths, 64, 300)
    ones = heap.copy()
    ones[offsets[2] + 4] = 0xFF  # a block code of 31: no such code
    with pytest.raises(ValueError, match="tile 2"):
        rice_decode(ones, offsets, lengths, 64, 192)
    zeros = heap.copy()
    zeros[offsets[2] + 4 :] = 0
    zeros[offsets[2] + 4] = 0b00001000  # fs = 0, then a unary run that never ends
    with pytest.raises(ValueError, match="tile 2"):
        rice_decode(zeros, offsets, lengths, 64, 192)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_a_truncated_file_raises(tmp_path: Path) -> None:
    path = _write(tmp_path / "image.fits", _sky((50, 96), np.random.default_rng(SEED)),
                  compression_type="RICE_1", quantize_level=16.0)  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 6000])
    with pytest.raises((OSError, ValueError)):
        read_compressed_images(path, ("IMAGE",))


def test_an_uncompressed_image_is_read_as_astropy_reads_it(tmp_path: Path) -> None:
    image = _sky((20, 30), np.random.default_rng(SEED))
    path = tmp_path / "plain.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="IMAGE")]).writeto(path)
    _same_bits(read_compressed_images(path, ("IMAGE",))["IMAGE"], _astropy(path))
