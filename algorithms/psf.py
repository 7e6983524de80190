"""PSF models: a pixel-basis model fitted to bright stars with linear spatial variation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from algorithms import mask as mk
from algorithms.moments import adaptive_moments
from algorithms.psf_wings import fit_moffat, wing_size


def fourier_shift(stamp: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Band-limited (sinc) sub-pixel shift; unlike spline shifts it does not blur the PSF.

    Odd stamps (every PSF stamp) take real FFTs and a separable phase ramp: the shifted
    spectrum stays Hermitian, so this equals the complex transform's real part at ~⅔ the cost.
    """
    ny, nx = stamp.shape
    if ny % 2 == 0 or nx % 2 == 0:
        spec = ndimage.fourier_shift(np.fft.fft2(stamp), (dy, dx))
        return np.fft.ifft2(spec).real
    spec = sfft.rfft2(stamp)
    spec *= np.exp(-2j * np.pi * dy * sfft.fftfreq(ny)).astype(spec.dtype)[:, None]
    spec *= np.exp(-2j * np.pi * dx * sfft.rfftfreq(nx)).astype(spec.dtype)
    return sfft.irfft2(spec, s=(ny, nx))


class Psf:
    """A normalised PSF image available at any position.

    ``kernel_at`` is the whole PSF, wings included (what image subtraction convolves with);
    ``realize`` gives its central ``fit_size`` pixels, not renormalised, for fitting sources:
    a model truncated where the data are still fitted stays unbiased.
    """

    size: int
    fit_size: int = 0

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        """The PSF centred on the central pixel of a ``size``×``size`` stamp, summing to 1."""
        raise NotImplementedError

    def fit_kernel_at(self, x: float, y: float) -> np.ndarray:
        """The central ``fit_size``² pixels of ``kernel_at`` (all of it when 0 or larger)."""
        k = self.kernel_at(x, y)
        return _crop(k, self.fit_size)

    def realize(self, x: float, y: float) -> tuple[np.ndarray, int, int]:
        """PSF centred at sub-pixel (x, y); returns (stamp, x0, y0) of its lower-left pixel."""
        k = self.fit_kernel_at(x, y)
        ix, iy = round(x), round(y)
        dx, dy = x - ix, y - iy
        if abs(dx) > 1e-3 or abs(dy) > 1e-3:
            k = fourier_shift(k, dx, dy)
        h = k.shape[0] // 2
        return k, ix - h, iy - h

    def sigma_at(self, x: float, y: float) -> float:
        k = self.kernel_at(x, y)
        c = k.shape[0] // 2
        m = adaptive_moments(k, c, c, sigma0=1.5)
        return m.sigma if m.ok else 1.5

    def moments_at(self, x: float, y: float) -> tuple[float, float, float]:
        k = self.kernel_at(x, y)
        c = k.shape[0] // 2
        m = adaptive_moments(k, c, c, sigma0=1.5)
        return m.ixx, m.iyy, m.ixy


def _crop(k: np.ndarray, size: int) -> np.ndarray:
    if size <= 0 or size >= k.shape[0]:
        return k
    o = (k.shape[0] - size) // 2
    return k[o : o + size, o : o + size]


@dataclass
class KernelPsf(Psf):
    """A spatially constant PSF from one image."""

    kernel: np.ndarray
    fit_size: int = 0

    def __post_init__(self) -> None:
        if self.kernel.ndim != 2 or self.kernel.shape[0] != self.kernel.shape[1]:
            raise ValueError("PSF kernel must be square")
        if self.kernel.shape[0] % 2 == 0:
            raise ValueError("PSF kernel size must be odd")
        self.kernel = (self.kernel / self.kernel.sum()).astype(np.float64)
        self.size = self.kernel.shape[0]

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        return self.kernel


@dataclass
class PixelPsf(Psf):
    """Pixel basis with polynomial spatial variation: K(x,y) = Σ_k c_k(x,y)·B_k.

    Terms are 1, u, v (u, v ∈ [−1, 1] across the CCD) when ``order`` is 1.
    """

    basis: np.ndarray
    order: int
    shape: tuple[int, int]
    nstars: int

    def __post_init__(self) -> None:
        self.size = self.basis.shape[1]

    def _terms(self, x: float, y: float) -> np.ndarray:
        return ccd_poly_terms(np.array([x]), np.array([y]), self.shape, self.order)[0]

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        k = np.tensordot(self._terms(x, y), self.basis, axes=1)
        k = np.clip(k, 0.0, None) if k.min() < -0.01 * k.max() else k
        return k / k.sum()


class WingedPsf(Psf):
    """A core PSF model whose outer part is its fitted Moffat, out to ``size`` pixels.

    Inside ``blend_radius`` the pixel model is kept (it holds what a Moffat does not); beyond,
    where each pixel of a stacked stamp is mostly sky noise and any error in the local sky
    adds a pedestal, the Moffat takes over, with a linear taper ``taper`` pixels wide.
    ``realize`` fits with the central ``fit_size`` pixels (the core stamp) of the whole.
    """

    def __init__(
        self, core: Psf, blend_radius: float | None = None, taper: float = 2.0,
        size: int | None = None,
    ) -> None:  # fmt: skip
        self.core = core
        c = core.kernel_at(*_centre(core))
        self.moffat = fit_moffat(c)
        n = c.shape[0]
        self.size = max(size or wing_size(self.moffat, n), n)
        self.fit_size = n
        fwhm = 2.0 * self.moffat.alpha * np.sqrt(2.0 ** (1.0 / self.moffat.beta) - 1.0)
        rb = blend_radius if blend_radius is not None else 1.5 * fwhm
        rb = min(rb, n // 2 - taper)
        h = self.size // 2
        yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
        self.model = self.moffat.evaluate(xx, yy)
        self.weight = np.clip((rb + taper - np.hypot(xx, yy)) / (2.0 * taper), 0.0, 1.0)
        self._constant = getattr(core, "order", None) == 0 or not hasattr(core, "order")
        self._cached = self._build(c) if self._constant else None
        self._cells: dict[tuple[int, int], np.ndarray] = {}

    def _build(self, c: np.ndarray) -> np.ndarray:
        out = self.model.copy()
        o = (self.size - c.shape[0]) // 2
        sl = np.s_[o : o + c.shape[0], o : o + c.shape[0]]
        w = self.weight[sl]
        out[sl] = w * c + (1.0 - w) * out[sl]
        return out / out.sum()

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        """Kernels of a spatially varying core are built once per 64-px cell (at its centre)."""
        if self._cached is not None:
            return self._cached
        key = (int(x // 64), int(y // 64))
        k = self._cells.get(key)
        if k is None:
            k = self._build(self.core.kernel_at(64 * key[0] + 32.0, 64 * key[1] + 32.0))
            self._cells[key] = k
        return k


def _centre(psf: Psf) -> tuple[float, float]:
    shape = getattr(psf, "shape", None)
    if shape is None:
        return 0.0, 0.0
    return shape[1] / 2.0, shape[0] / 2.0


def ccd_poly_terms(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """The polynomial terms (1; u, v; u², uv, v² up to ``order``) at pixel positions (x, y) of
    a CCD of ``shape`` (ny, nx), u and v running from −1 to 1 across it; one row a position."""
    ny, nx = shape
    u = 2.0 * np.asarray(x, np.float64) / max(nx - 1, 1) - 1.0
    v = 2.0 * np.asarray(y, np.float64) / max(ny - 1, 1) - 1.0
    return _poly_terms(u, v, order)


def _poly_terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    cols = [np.ones_like(u)]
    if order >= 1:
        cols += [u, v]
    if order >= 2:
        cols += [u * u, u * v, v * v]
    return np.stack(cols, axis=1)


def gaussian_kernel(sigma: float, size: int) -> np.ndarray:
    """Pixel-integrated circular Gaussian (erf differences), normalised."""
    from scipy.special import erf

    h = size // 2
    edges = np.arange(-h - 0.5, h + 1.0, 1.0) / (np.sqrt(2.0) * sigma)
    p = np.diff(erf(edges))
    k = np.outer(p, p)
    return k / k.sum()


@dataclass
class PsfFitResult:
    psf: Psf
    stars: np.ndarray
    used: np.ndarray
    sigma: float
    fwhm: float
    residual_rms: float


def select_psf_stars(
    image: np.ndarray,
    mask: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    sig: np.ndarray,
    size: int,
    min_snr: float = 40.0,
    max_stars: int = 200,
) -> tuple[np.ndarray, float]:
    """Indices of bright, clean, isolated, point-like candidates and the stellar-locus σ."""
    h = size // 2
    ny, nx = image.shape
    inside = (xs >= h + 2) & (xs < nx - h - 2) & (ys >= h + 2) & (ys < ny - h - 2)
    cand = np.nonzero(inside & (sig >= min_snr))[0]
    cand = cand[np.argsort(-sig[cand])][: 4 * max_stars]
    if cand.size == 0:
        return cand, float("nan")
    pts = np.stack([xs, ys], axis=1).astype(float)
    from scipy.spatial import cKDTree

    tree = cKDTree(pts)
    keep, sizes = [], []
    for i in cand:
        near = tree.query_ball_point(pts[i], r=h)
        if any(j != i and sig[j] > 0.05 * sig[i] for j in near):
            continue
        sl = np.s_[ys[i] - h : ys[i] + h + 1, xs[i] - h : xs[i] + h + 1]
        if (mask[sl] & (mk.UNUSABLE | mk.INTRP)).any():
            continue
        m = adaptive_moments(image, float(xs[i]), float(ys[i]))
        if not m.ok:
            continue
        keep.append(i)
        sizes.append(m.sigma)
    if not keep:
        return np.zeros(0, dtype=int), float("nan")
    sizes_a = np.asarray(sizes)
    locus = float(np.median(sizes_a))
    good = np.abs(sizes_a / locus - 1.0) < 0.12
    return np.asarray(keep)[good][:max_stars], locus


def fit_psf(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    sig: np.ndarray,
    size: int | None = None,
    min_stars: int = 5,
    min_snr: float = 40.0,
    labels: np.ndarray | None = None,
) -> PsfFitResult:
    """Stack recentred, flux-normalised star stamps into a pixel basis, linear in (x, y),
    continued beyond ~1.5 FWHM by its fitted Moffat (``WingedPsf``).

    Each stamp is shifted by a cubic spline to put its adaptive centroid on the central pixel;
    per pixel a weighted least-squares fit of the normalised stamps against (1, u, v) gives
    the spatial variation. Stars deviating > 4σ from the model are rejected once.
    """
    if image.shape != mask.shape:
        raise ValueError("image and mask shapes differ")
    if size is None:
        probe = select_psf_stars(image, mask, xs, ys, sig, 25, max_stars=50)[1]
        fwhm = 2.3548 * (probe if np.isfinite(probe) else 2.0)
        size = int(np.clip(2 * np.ceil(3.0 * fwhm) + 1, 15, 51))
    idx, _ = select_psf_stars(image, mask, xs, ys, sig, size, min_snr)
    if idx.size < min_stars:
        raise ValueError(f"only {idx.size} PSF stars (need {min_stars})")
    h = size // 2
    stamps, wts, pos, oks = [], [], [], []
    for i in idx:
        m = adaptive_moments(image, float(xs[i]), float(ys[i]))
        ix, iy = round(m.x), round(m.y)
        if not (h <= ix < image.shape[1] - h and h <= iy < image.shape[0] - h):
            continue
        sl = np.s_[iy - h : iy + h + 1, ix - h : ix + h + 1]
        # No local sky: the image is background-subtracted, and a stamp's border holds the
        # star's own wing (subtracting it puts a stamp-sized pedestal into the model).
        st = fourier_shift(image[sl].astype(np.float64), ix - m.x, iy - m.y)
        flux = st.sum()
        if flux <= 0:
            continue
        ok = np.ones(st.shape, dtype=bool)
        if labels is not None:
            own = labels[int(ys[i]), int(xs[i])]
            other = (labels[sl] != 0) & (labels[sl] != own)
            ok = ~ndimage.binary_dilation(other, iterations=2)
        stamps.append(st)
        oks.append(ok)
        wts.append(float(np.median(variance[sl])))
        pos.append((m.x, m.y))
    nst = len(stamps)
    if nst < min_stars:
        raise ValueError(f"only {nst} usable PSF stars (need {min_stars})")
    raw, sky_var, p_a = np.asarray(stamps), np.asarray(wts), np.asarray(pos)
    okm = np.asarray(oks, dtype=float)
    order = 1 if nst >= 80 else 0
    ny, nx = image.shape
    terms = ccd_poly_terms(p_a[:, 0], p_a[:, 1], (ny, nx), order)
    used = np.ones(nst, dtype=bool)
    # Normalising by the noisy stamp sum and weighting by it biases the stack; instead each
    # star's flux is re-estimated by PSF photometry with the previous model (3 passes).
    flux = (raw * okm).sum(axis=(1, 2))
    basis = np.zeros((terms.shape[1], size, size))
    resid_rms = float("nan")
    for _ in range(4):
        st_a = raw / flux[:, None, None]
        w_n = flux**2 / (sky_var * 50.0 + np.abs(flux))
        t, s = terms[used], st_a[used]
        w = w_n[used, None, None] * okm[used]
        a = np.einsum("nk,nl,nij->ijkl", t, t, w) + 1e-12 * np.eye(t.shape[1])
        b = np.einsum("nk,nij->ijk", t, s * w)
        basis = np.moveaxis(np.linalg.solve(a, b[..., None])[..., 0], -1, 0)
        model = np.einsum("nk,kij->nij", terms, basis)
        model /= model.sum(axis=(1, 2))[:, None, None]
        flux = np.einsum("nij,nij->n", model * okm, raw) / np.einsum(
            "nij,nij->n", model * okm, model
        )
        resid = (raw - flux[:, None, None] * model) * okm
        chi2 = (resid**2).sum(axis=(1, 2)) / sky_var / okm.sum(axis=(1, 2))
        resid_rms = float(np.sqrt(np.mean((resid[used] / flux[used, None, None]) ** 2)))
        new_used = chi2 < max(2.0, 3.0 * float(np.median(chi2[used])))
        if new_used.sum() >= min_stars:
            used = new_used
    psf = WingedPsf(PixelPsf(basis=basis, order=order, shape=(ny, nx), nstars=int(used.sum())))
    s = psf.sigma_at(nx / 2, ny / 2)
    return PsfFitResult(
        psf=psf,
        stars=idx,
        used=used,
        sigma=s,
        fwhm=2.3548 * s,
        residual_rms=resid_rms,
    )
