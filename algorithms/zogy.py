"""ZOGY image subtraction (Zackay, Ofek & Gal-Yam 2016) with known PSFs, via scipy.fft."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from scipy import fft as sfft

from algorithms import mask as mk


@dataclass
class ZogyResult:
    """Difference D = kn ⊗ N − kr ⊗ R in science flux units; ``psf`` is its PSF (sum 1).

    ``kernel_science``/``kernel_template`` are the real-space kernels applied to each image
    (DMS-REQ-0074: the matching kernels are recorded).
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    kernel_science: np.ndarray
    kernel_template: np.ndarray
    sigma_science: float
    sigma_template: float
    fft_shape: tuple[int, int]


def _centre_kernel(k: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Embed a centred odd kernel into ``shape`` with its centre at (0, 0) (wrap-around)."""
    out = np.zeros(shape, dtype=np.float64)
    h = k.shape[0] // 2
    out[: k.shape[0], : k.shape[1]] = k
    return np.roll(out, (-h, -h), axis=(0, 1))


def _kernel_rfft2(k: np.ndarray, shape: tuple[int, int], workers: int) -> np.ndarray:
    """``rfft2`` of a centred odd kernel wrapped onto ``shape``, transforming only its rows.

    Equal to ``rfft2(_centre_kernel(k, shape))`` in single precision, at about half the cost.
    """
    n, h = k.shape[0], k.shape[0] // 2
    rows = np.zeros((n, shape[1]), dtype=np.float32)
    rows[:, :n] = k
    rows = np.roll(rows, -h, axis=1)
    spec = sfft.rfft(rows, axis=1, workers=workers)
    full = np.zeros((shape[0], spec.shape[1]), dtype=np.complex64)
    full[: n - h] = spec[h:]
    full[shape[0] - h :] = spec[:h]
    return sfft.fft(full, axis=0, overwrite_x=True, workers=workers)


def _extract_kernel(full: np.ndarray, size: int) -> np.ndarray:
    h = size // 2
    return np.roll(full, (h, h), axis=(0, 1))[:size, :size].copy()


def _robust_sigma(image: np.ndarray, variance: np.ndarray, good: np.ndarray) -> float:
    v = variance[::4, ::4][good[::4, ::4]]
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no pixel with finite variance")
    return float(np.sqrt(np.median(v)))


def _kernel_hats(
    ps: np.ndarray,
    pt: np.ndarray,
    sn: float,
    sr: float,
    shape: tuple[int, int],
    dtype: type,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fourier transforms of kn, kr and the difference PSF on an FFT grid of ``shape``.

    In single precision, |P̂| below 1e-15 is set to 0 so that |P̂|² never becomes a float32
    denormal (which is ~100× slower); the denominator has a relative floor of 1e-12.
    """
    pn = sfft.rfft2(_centre_kernel(ps, shape).astype(dtype), workers=workers)
    pr = sfft.rfft2(_centre_kernel(pt, shape).astype(dtype), workers=workers)
    if dtype == np.float32:
        for a in (pn, pr):
            a[np.abs(a) < 1e-15] = 0
    denom2 = sn**2 * (pr.real**2 + pr.imag**2) + sr**2 * (pn.real**2 + pn.imag**2)
    denom = np.sqrt(np.maximum(denom2, 1e-12 * denom2.max())).astype(dtype)
    del denom2
    fd = 1.0 / np.sqrt(sn**2 + sr**2)
    denom *= dtype(fd)
    kn_hat = pr / denom
    kr_hat = pn / denom
    pd_hat = pn * kn_hat if dtype == np.float64 else np.zeros(0, dtype=pn.dtype)
    return kn_hat, kr_hat, pd_hat


@numba.njit(cache=True, nogil=True)
def _combine(
    s_hat: np.ndarray, t_hat: np.ndarray, pn: np.ndarray, pr: np.ndarray, sn: float, sr: float
) -> None:
    """In place: Ŝ ← (P̂r·Ŝ − P̂n·T̂) / √(σn²|P̂r|² + σr²|P̂n|²) · √(σn² + σr²).

    The kernel algebra runs in double precision, so |P̂|² never becomes a float32 denormal;
    the denominator has a relative floor of 1e-12 (|P̂(0)| = 1 is the maximum).
    """
    sn2, sr2 = sn * sn, sr * sr
    floor = 1e-12 * (sn2 + sr2)
    fd = np.sqrt(sn2 + sr2)
    ny, nx = s_hat.shape
    for y in range(ny):
        for x in range(nx):
            a = complex(pn[y, x])
            b = complex(pr[y, x])
            d2 = sn2 * (b.real * b.real + b.imag * b.imag) + sr2 * (
                a.real * a.real + a.imag * a.imag
            )
            scale = fd / np.sqrt(max(d2, floor))
            v = (b * complex(s_hat[y, x]) - a * complex(t_hat[y, x])) * scale
            if abs(v.real) < 1e-30:
                v = complex(0.0, v.imag)
            if abs(v.imag) < 1e-30:
                v = complex(v.real, 0.0)
            s_hat[y, x] = v


@numba.njit(cache=True, nogil=True)
def _finish(
    full: np.ndarray, p: int, science_var: np.ndarray, template_var: np.ndarray,
    skn: np.float32, skr: np.float32, bad: np.ndarray, diff: np.ndarray, var: np.ndarray,
) -> None:  # fmt: skip
    """In one pass: the difference cut from the padded transform, its variance
    var_N·Σkn² + var_R·Σkr², and bad pixels set to 0 with infinite variance."""
    ny, nx = diff.shape
    for y in range(ny):
        for x in range(nx):
            if bad[y, x]:
                diff[y, x] = 0.0
                var[y, x] = np.inf
            else:
                diff[y, x] = full[p + y, p + x]
                var[y, x] = science_var[y, x] * skn + template_var[y, x] * skr


def _padded(img: np.ndarray, bad: np.ndarray, fshape: tuple[int, int], p: int) -> np.ndarray:
    """``img`` (bad pixels zeroed) mirror-padded by ``p`` into a zero buffer of ``fshape``."""
    ny, nx = img.shape
    buf = np.zeros(fshape, dtype=np.float32)
    c = buf[p : p + ny, p : p + nx]
    c[...] = img
    c[bad] = 0.0
    if p > 0 and min(ny, nx) <= p + 1:
        buf[: ny + 2 * p, : nx + 2 * p] = np.pad(c.copy(), p, mode="reflect")
    elif p > 0:
        buf[p : p + ny, :p] = c[:, p:0:-1]
        buf[p : p + ny, p + nx : 2 * p + nx] = c[:, nx - 2 : nx - 2 - p : -1]
        w = nx + 2 * p
        buf[:p, :w] = buf[2 * p : p : -1, :w]
        buf[p + ny : 2 * p + ny, :w] = buf[p + ny - 2 : ny - 2 : -1, :w]
    return buf


def zogy_subtract(
    science: np.ndarray,
    science_var: np.ndarray,
    science_mask: np.ndarray,
    template: np.ndarray,
    template_var: np.ndarray,
    template_mask: np.ndarray,
    psf_science: np.ndarray,
    psf_template: np.ndarray,
    workers: int = 1,
    pad: int | None = None,
) -> ZogyResult:
    """ZOGY proper difference image, normalised to science flux units (F_N = F_R = 1).

    Saturated pixels (SAT in either mask) are zeroed in both images, like missing data: a
    clipped core would otherwise leave its missing charge, spread by the kernels, around it.
    Both images must already be on the same pixel grid, background-subtracted and in the
    same photometric units. The PSFs are odd square kernels. Images are padded by the kernel
    size (mirror) to a fast FFT length, and all transforms are single precision, with the
    kernels computed in double precision and clipped so float32 stays away from denormals.
    The variance plane uses var_N·Σkn² + var_R·Σkr², exact for smoothly varying variance.
    """
    if science.shape != template.shape:
        raise ValueError("science and template shapes differ")
    if psf_science.shape[0] % 2 == 0 or psf_template.shape[0] % 2 == 0:
        raise ValueError("PSF kernels must have odd size")
    ny, nx = science.shape
    ksize = max(psf_science.shape[0], psf_template.shape[0])
    p = pad if pad is not None else ksize
    fshape = (sfft.next_fast_len(ny + 2 * p, real=True), sfft.next_fast_len(nx + 2 * p, real=True))
    union = np.asarray(science_mask | template_mask, dtype=mk.MASK_DTYPE)
    bad = (union & (mk.NO_DATA | mk.SAT)) != 0
    good = ~bad
    sn = _robust_sigma(science, science_var, good)
    sr = _robust_sigma(template, template_var, good)
    ps = psf_science / psf_science.sum()
    pt = psf_template / psf_template.sum()
    out_k = 4 * ksize + 1
    small = (sfft.next_fast_len(2 * out_k, real=True),) * 2
    kn_s, kr_s, pd_s = (
        sfft.irfft2(k, s=small) for k in _kernel_hats(ps, pt, sn, sr, small, np.float64)
    )
    kn_small, kr_small = _extract_kernel(kn_s, out_k), _extract_kernel(kr_s, out_k)
    psf_small = _extract_kernel(pd_s, ksize)
    skn, skr = np.float32((kn_s**2).sum()), np.float32((kr_s**2).sum())
    pn = _kernel_rfft2(ps, fshape, workers)
    pr = _kernel_rfft2(pt, fshape, workers)
    acc = sfft.rfft2(_padded(science, bad, fshape, p), workers=workers)
    tmp = sfft.rfft2(_padded(template, bad, fshape, p), workers=workers)
    _combine(acc, tmp, pn, pr, sn, sr)
    del tmp, pn, pr
    full = sfft.irfft2(acc, s=fshape, workers=workers)
    del acc
    diff = np.empty((ny, nx), dtype=np.float32)
    var = np.empty((ny, nx), dtype=np.float32)
    _finish(
        full, p, np.asarray(science_var, dtype=np.float32),
        np.asarray(template_var, dtype=np.float32), skn, skr, bad, diff, var,
    )  # fmt: skip
    del full
    msk = union
    msk &= ~np.int32(mk.DETECTED | mk.DETECTED_NEGATIVE)
    return ZogyResult(
        image=diff,
        variance=var,
        mask=msk,
        psf=psf_small / psf_small.sum(),
        kernel_science=kn_small.astype(np.float32),
        kernel_template=kr_small.astype(np.float32),
        sigma_science=sn,
        sigma_template=sr,
        fft_shape=fshape,
    )


def scale_variance(
    image: np.ndarray, variance: np.ndarray, mask: np.ndarray, stride: int = 3
) -> float:
    """Rescale ``variance`` in-place to the measured noise (Rubin's ScaleVarianceTask).

    The ratio is the robust (MAD) variance of image/√variance over clean pixels. It absorbs
    what the per-pixel propagation misses, mainly noise correlated by warping.
    """
    bad = mk.NO_DATA | mk.SAT | mk.BAD | mk.CR | mk.DETECTED | mk.DETECTED_NEGATIVE | mk.INTRP
    sl = np.s_[::stride, ::stride]
    good = ((mask[sl] & bad) == 0) & np.isfinite(variance[sl]) & (variance[sl] > 0)
    z = image[sl][good] / np.sqrt(variance[sl][good])
    if z.size < 100:
        return 1.0
    mad = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    ratio = mad**2
    if not np.isfinite(ratio) or ratio <= 0:
        return 1.0
    variance *= np.float32(ratio)
    return ratio
