"""ZOGY image subtraction (Zackay, Ofek & Gal-Yam 2016) with known PSFs, via scipy.fft."""

from __future__ import annotations

from dataclasses import dataclass

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


def _extract_kernel(full: np.ndarray, size: int) -> np.ndarray:
    h = size // 2
    return np.roll(full, (h, h), axis=(0, 1))[:size, :size].copy()


def _robust_sigma(image: np.ndarray, variance: np.ndarray, good: np.ndarray) -> float:
    v = variance[good]
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
    bad = ((science_mask | template_mask) & mk.NO_DATA) != 0
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
    kn_hat32, kr_hat32, _ = _kernel_hats(ps, pt, sn, sr, fshape, np.float32, workers)

    def _padded(img: np.ndarray) -> np.ndarray:
        a = np.where(bad, 0.0, img).astype(np.float32)
        buf = np.zeros(fshape, dtype=np.float32)
        buf[: ny + 2 * p, : nx + 2 * p] = np.pad(a, p, mode="reflect")
        return buf

    acc = sfft.rfft2(_padded(science), workers=workers)
    acc *= kn_hat32
    tmp = sfft.rfft2(_padded(template), workers=workers)
    tmp *= kr_hat32
    acc -= tmp
    del tmp
    diff = sfft.irfft2(acc, s=fshape, workers=workers)[p : p + ny, p : p + nx]
    diff = np.ascontiguousarray(diff, dtype=np.float32)
    var = science_var.astype(np.float32) * skn + template_var.astype(np.float32) * skr
    msk = (science_mask | template_mask).astype(mk.MASK_DTYPE)
    msk &= ~np.int32(mk.DETECTED | mk.DETECTED_NEGATIVE)
    diff[bad] = 0.0
    var[bad] = np.inf
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
