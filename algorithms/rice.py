"""Decoding of FITS tile-compressed images (RICE_1, 4-byte pixels), all tiles in one call.

A 4k×4k template's two planes took ~0.2 core-s to decode through astropy (cfitsio's decoder,
one tile at a time), at every preload of a CCD. This decoder reads the same bit stream with a
64-bit bit buffer and a count-leading-zeros instruction for the Rice codes' unary part,
instead of cfitsio's byte at a time: ~2× faster on the templates, with the same pixels
(tested bit for bit against astropy). Unquantizing follows the FITS standard as astropy does
(``q * ZSCALE + ZZERO`` in double precision, rounded to float32).

The stream (Pence et al. 2009, the FITS tiled-image convention; cfitsio ``fits_rdecomp``):
the first pixel as 4 big-endian bytes, then blocks of ``blocksize`` pixels, each a 5-bit code
``fs + 1`` followed by the block's zig-zag-mapped differences: all zero (``fs < 0``), raw
32-bit values (``fs == 25``), or Rice codes (a unary quotient, a one bit, ``fs`` low bits).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from numpy.typing import NDArray

_FS_RAW = 25


@intrinsic
def _leading_zeros(typingctx: Any, x: Any) -> Any:
    """Leading zero bits of a uint64 (64 for 0): one instruction."""
    if x != types.uint64:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _refill(c: NDArray[np.uint8], p: int, acc: np.uint64, avail: int) -> tuple[int, Any, int]:
    """Top up the bit buffer ``acc`` (``avail`` bits, most significant first) from ``c[p:]``."""
    while avail <= 56 and p < c.size:
        acc |= np.uint64(c[p]) << np.uint64(56 - avail)
        p += 1
        avail += 8
    return p, acc, avail


@numba.njit(cache=True, nogil=True, inline="always")
def _undo_difference(last: np.uint32, d: np.uint32) -> np.uint32:
    return np.uint32(last + ((d >> np.uint32(1)) ^ (np.uint32(0) - (d & np.uint32(1)))))


@numba.njit(cache=True, nogil=True)
def _decode_tile(
    c: NDArray[np.uint8], start: int, clen: int, out: NDArray[np.uint32], first: int, nx: int,
    nblock: int,
) -> bool:  # fmt: skip
    """Decode the stream at ``c[start:start+clen]`` into ``out[first:first+nx]``; False when
    it is corrupt (it ends before its pixels do, or holds an impossible code). The buffer may
    read past the stream into the rest of ``c``: those bits are never used by a valid one."""
    if clen < 4:
        return False
    last = np.uint32(
        (np.uint32(c[start]) << np.uint32(24)) | (np.uint32(c[start + 1]) << np.uint32(16))
        | (np.uint32(c[start + 2]) << np.uint32(8)) | np.uint32(c[start + 3])
    )  # fmt: skip
    p, acc, avail = start + 4, np.uint64(0), 0
    i = 0
    while i < nx:
        p, acc, avail = _refill(c, p, acc, avail)
        if avail < 5:
            return False
        fs = np.int64(acc >> np.uint64(59)) - 1
        acc <<= np.uint64(5)
        avail -= 5
        imax = min(i + nblock, nx)
        if fs < 0:
            out[first + i : first + imax] = last
            i = imax
        elif fs == _FS_RAW:
            while i < imax:
                if avail < 32:
                    p, acc, avail = _refill(c, p, acc, avail)
                    if avail < 32:
                        return False
                last = _undo_difference(last, np.uint32(acc >> np.uint64(32)))
                acc <<= np.uint64(32)
                avail -= 32
                out[first + i] = last
                i += 1
        elif fs > _FS_RAW:
            return False
        else:
            low = np.uint64(fs)
            while i < imax:
                if avail < 32:
                    p, acc, avail = _refill(c, p, acc, avail)
                quotient = 0
                z = np.int64(_leading_zeros(acc))
                while z >= avail:  # the unary run goes on past the buffered bits
                    quotient += avail
                    acc, avail = np.uint64(0), 0
                    p, acc, avail = _refill(c, p, acc, avail)
                    if avail == 0:
                        return False
                    z = np.int64(_leading_zeros(acc))
                quotient += z
                acc = np.uint64(0) if z >= 63 else acc << np.uint64(z + 1)
                avail -= z + 1
                if avail < fs:
                    p, acc, avail = _refill(c, p, acc, avail)
                    if avail < fs:
                        return False
                rest = np.uint64(0)
                if fs > 0:
                    rest = acc >> np.uint64(64 - fs)
                    acc <<= low
                    avail -= fs
                last = _undo_difference(last, np.uint32(((np.uint64(quotient) << low) | rest)
                                                        & np.uint64(0xFFFFFFFF)))  # fmt: skip
                out[first + i] = last
                i += 1
    return (p - start) * 8 - avail <= clen * 8


@numba.njit(cache=True, nogil=True)
def _decode_tiles(
    heap: NDArray[np.uint8], offsets: NDArray[np.int64], lengths: NDArray[np.int64],
    tile_pixels: int, out: NDArray[np.uint32], blocksize: int,
) -> int:  # fmt: skip
    """Decode every tile with a non-empty stream; the index of the first corrupt tile, or −1."""
    for t in range(offsets.size):
        if lengths[t] == 0:
            continue
        first = t * tile_pixels
        nx = min(tile_pixels, out.size - first)
        if not _decode_tile(heap, offsets[t], lengths[t], out, first, nx, blocksize):
            return t
    return -1


@numba.njit(cache=True, nogil=True)
def _decode_quantized_tiles(
    heap: NDArray[np.uint8], offsets: NDArray[np.int64], lengths: NDArray[np.int64],
    tile_pixels: int, out: NDArray[np.float32], blocksize: int, scale: NDArray[np.float64],
    zero: NDArray[np.float64], blank: int, has_blank: bool,
) -> int:  # fmt: skip
    """``_decode_tiles`` of quantized floats, each tile unquantized while in the cache."""
    q = np.empty(tile_pixels, dtype=np.uint32)
    for t in range(offsets.size):
        first = t * tile_pixels
        nx = min(tile_pixels, out.size - first)
        if lengths[t] == 0:
            out[first : first + nx] = 0.0
            continue
        if not _decode_tile(heap, offsets[t], lengths[t], q, 0, nx, blocksize):
            return t
        s, z = scale[t], zero[t]
        for i in range(nx):
            out[first + i] = np.float32(np.float64(np.int32(q[i])) * s + z)
        if has_blank:
            for i in range(nx):
                if np.int32(q[i]) == blank:
                    out[first + i] = np.nan
    return -1


def _check_tiling(
    heap: NDArray[np.uint8], offsets: NDArray[Any], lengths: NDArray[Any], tile_pixels: int,
    n_pixels: int, blocksize: int,
) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]:  # fmt: skip
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if tile_pixels <= 0 or blocksize <= 0 or n_pixels < 0:
        raise ValueError(f"bad tiling: {tile_pixels} pixels a tile, blocks of {blocksize}")
    if offsets.shape != lengths.shape or offsets.size != -(-n_pixels // tile_pixels):
        raise ValueError(f"{offsets.size} tiles do not cover {n_pixels} pixels")
    if offsets.size and (
        (offsets < 0).any() or (lengths < 0).any() or (offsets + lengths > heap.size).any()
    ):
        raise ValueError("a tile's compressed stream lies outside the heap")
    return np.ascontiguousarray(heap, dtype=np.uint8), offsets, lengths


def _raise_if_corrupt(bad: int) -> None:
    if bad >= 0:
        raise ValueError(f"tile {bad}: its compressed stream is corrupt or ends too soon")


def rice_decode(
    heap: NDArray[np.uint8], offsets: NDArray[Any], lengths: NDArray[Any], tile_pixels: int,
    n_pixels: int, blocksize: int = 32,
) -> NDArray[np.int32]:  # fmt: skip
    """The 4-byte RICE_1 pixels of all tiles, concatenated (tile ``t`` starts at
    ``t * tile_pixels``); tiles whose stream is empty are left 0 (stored otherwise).

    Raises ``ValueError`` when a stream lies outside ``heap`` or is corrupt.
    """
    heap, offsets, lengths = _check_tiling(heap, offsets, lengths, tile_pixels, n_pixels,
                                           blocksize)  # fmt: skip
    out = np.zeros(n_pixels, dtype=np.uint32)
    _raise_if_corrupt(_decode_tiles(heap, offsets, lengths, tile_pixels, out, blocksize))
    return out.view(np.int32)


def rice_decode_quantized(
    heap: NDArray[np.uint8], offsets: NDArray[Any], lengths: NDArray[Any], tile_pixels: int,
    n_pixels: int, scale: NDArray[Any], zero: NDArray[Any], blank: int | None = None,
    blocksize: int = 32,
) -> NDArray[np.float32]:  # fmt: skip
    """Float pixels of RICE_1 tiles quantized without dithering: ``q * scale + zero`` per
    tile (in double precision, then rounded), NaN where ``q == blank``; tiles whose stream
    is empty are 0 (stored otherwise). Raises ``ValueError`` as ``rice_decode``."""
    heap, offsets, lengths = _check_tiling(heap, offsets, lengths, tile_pixels, n_pixels,
                                           blocksize)  # fmt: skip
    scale = np.ascontiguousarray(scale, dtype=np.float64)
    zero = np.ascontiguousarray(zero, dtype=np.float64)
    if scale.shape != offsets.shape or zero.shape != offsets.shape:
        raise ValueError(f"{scale.size} scales and {zero.size} zeros for {offsets.size} tiles")
    out = np.empty(n_pixels, dtype=np.float32)
    bad = _decode_quantized_tiles(heap, offsets, lengths, tile_pixels, out, blocksize, scale,
                                  zero, blank or 0, blank is not None)  # fmt: skip
    _raise_if_corrupt(bad)
    return out
