"""Alard & Lupton (1998) image subtraction: an empirical, spatially varying matching kernel.

The template is convolved to the science PSF with K(x, y) = Σ_k a_k(x, y)·B_k, where B_k
are Gaussians times polynomials (Rubin's defaults: σ = 0.7, 1.5, 3.0 px with degrees 4, 2,
2, kernel 21×21) and a_k are polynomials in the CCD position (Alard 2000). The coefficients,
with a polynomial background, are a weighted least-squares fit on stamps around bright
stars. With D = S − T ⊗ K − b, the difference PSF is the science PSF. The full-image
convolution uses the linearity of K in its spatial terms: T ⊗ K = Σ_j p_j(u, v)·(T ⊗ K_j),
one FFT convolution per spatial term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from algorithms import mask as mk
from algorithms.zogy import ZogyResult

SIGMAS = (0.7, 1.5, 3.0)
DEGREES = (4, 2, 2)


@dataclass
class KernelSolution:
    """Spatial kernel: ``coeffs[j]`` weights ``basis`` for spatial term j (1, u, v, …)."""

    basis: np.ndarray
    coeffs: np.ndarray
    background: np.ndarray
    spatial_order: int
    shape: tuple[int, int]
    n_stamps: int
    chi2: float

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        t = _terms(*_uv(np.array([x]), np.array([y]), self.shape), self.spatial_order)[0]
        return np.tensordot(t @ self.coeffs, self.basis, axes=1)

    def spatial_kernels(self) -> np.ndarray:
        """K_j = Σ_k c_jk B_k, one kernel per spatial term."""
        return np.tensordot(self.coeffs, self.basis, axes=1)


def _uv(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return 2.0 * x / max(shape[1] - 1, 1) - 1.0, 2.0 * y / max(shape[0] - 1, 1) - 1.0


def _terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    cols = [np.ones_like(u)]
    for d in range(1, order + 1):
        cols += [u ** (d - i) * v**i for i in range(d + 1)]
    return np.stack(cols, axis=1)


def gaussian_basis(
    size: int = 21, sigmas: Sequence[float] = SIGMAS, degrees: Sequence[int] = DEGREES
) -> np.ndarray:
    """Basis kernels (n, size, size): the first sums to 1, all others to 0, each scaled to
    unit norm (the least-squares problem is then well conditioned)."""
    if size % 2 == 0:
        raise ValueError("kernel size must be odd")
    h = size // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(float)
    out = []
    for s, deg in zip(sigmas, degrees, strict=True):
        g = np.exp(-(xx**2 + yy**2) / (2.0 * s * s))
        for d in range(deg + 1):
            for i in range(d + 1):
                out.append(g * (xx / h) ** (d - i) * (yy / h) ** i)
    basis = np.asarray(out)
    basis[0] /= basis[0].sum()
    for k in range(1, len(basis)):
        basis[k] -= basis[k].sum() * basis[0]
        basis[k] /= np.sqrt((basis[k] ** 2).sum())
    return basis


def _stamp_convolutions(stamp: np.ndarray, basis_hat: np.ndarray, fshape: tuple[int, int],
                        size: int) -> np.ndarray:  # fmt: skip
    """Valid-mode convolutions of a template stamp with every basis kernel: (nb, m, m)."""
    s = sfft.rfft2(stamp, s=fshape)
    full = sfft.irfft2(basis_hat * s[None], s=fshape, axes=(-2, -1))
    m = stamp.shape[0] - size + 1
    return full[:, size - 1 : size - 1 + m, size - 1 : size - 1 + m]


def fit_kernel(
    science: np.ndarray,
    science_var: np.ndarray,
    template: np.ndarray,
    mask: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    size: int = 21,
    stamp: int = 31,
    spatial_order: int = 1,
    background_order: int = 1,
    basis: np.ndarray | None = None,
    clip: float = 3.0,
) -> KernelSolution:
    """Least-squares kernel fit on ``stamp``×``stamp`` boxes centred on (xs, ys).

    Stamps with masked pixels (NO_DATA, SAT, BAD, CR) are skipped; after a first solution,
    stamps with χ²/pixel above ``clip`` × the median (variable stars, companions) are
    dropped and the fit is repeated once.
    """
    b = gaussian_basis(size) if basis is None else basis
    nb = len(b)
    ny, nx = science.shape
    h, hs = size // 2, stamp // 2
    big = stamp + size - 1
    fshape = (sfft.next_fast_len(big + size, real=True),) * 2
    basis_hat = sfft.rfft2(b, s=fshape, axes=(-2, -1))
    bad_bits = mk.NO_DATA | mk.SAT | mk.BAD | mk.CR
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for x, y in zip(np.round(xs).astype(int), np.round(ys).astype(int), strict=True):
        if not (hs + h <= x < nx - hs - h and hs + h <= y < ny - hs - h):
            continue
        sl = np.s_[y - hs : y + hs + 1, x - hs : x + hs + 1]
        if (mask[sl] & bad_bits).any():
            continue
        tb = template[y - hs - h : y + hs + h + 1, x - hs - h : x + hs + h + 1].astype(float)
        conv = _stamp_convolutions(tb, basis_hat, fshape, size).reshape(nb, -1).T
        var = science_var[sl].astype(float).ravel()
        if not np.all(np.isfinite(var) & (var > 0)):
            continue
        rows.append((conv, science[sl].astype(float).ravel(), 1.0 / var, np.array([x, y])))
    nt = _terms(np.zeros(1), np.zeros(1), spatial_order).shape[1]
    nbg = _terms(np.zeros(1), np.zeros(1), background_order).shape[1]
    if len(rows) < max(2 * nt, 5):
        raise ValueError(f"only {len(rows)} usable kernel stamps")
    pos = np.array([r[3] for r in rows], dtype=float)
    u, v = _uv(pos[:, 0], pos[:, 1], (ny, nx))
    ts, tb_ = _terms(u, v, spatial_order), _terms(u, v, background_order)
    use = np.ones(len(rows), dtype=bool)
    sol = np.zeros(nt * nb + nbg)
    chi = np.zeros(len(rows))
    for _ in range(2):
        a = np.zeros((sol.size, sol.size))
        rhs = np.zeros(sol.size)
        designs = []
        for k, (conv, d, w, _) in enumerate(rows):
            x_mat = np.concatenate(
                [(conv[:, :, None] * ts[k][None, None, :]).reshape(len(d), -1),
                 np.repeat(tb_[k][None, :], len(d), axis=0)], axis=1,
            )  # fmt: skip
            designs.append(x_mat)
            if use[k]:
                a += x_mat.T @ (x_mat * w[:, None])
                rhs += x_mat.T @ (d * w)
        sol = np.linalg.lstsq(a, rhs, rcond=1e-12)[0]
        for k, (_, d, w, _) in enumerate(rows):
            r = d - designs[k] @ sol
            chi[k] = float((r * r * w).mean())
        med = float(np.median(chi[use]))
        new_use = chi < clip * med
        if new_use.sum() < max(2 * nt, 5) or np.array_equal(new_use, use):
            break
        use = new_use
    coeffs = sol[: nt * nb].reshape(nb, nt).T
    return KernelSolution(
        basis=b, coeffs=coeffs, background=sol[nt * nb :], spatial_order=spatial_order,
        shape=(ny, nx), n_stamps=int(use.sum()), chi2=float(np.median(chi[use])),
    )  # fmt: skip


def convolve_spatial(
    template: np.ndarray, solution: KernelSolution, workers: int = 1
) -> np.ndarray:
    """T ⊗ K(x, y) = Σ_j p_j(u, v)·(T ⊗ K_j); one forward FFT, one inverse per term."""
    ny, nx = template.shape
    kj = solution.spatial_kernels()
    size = kj.shape[1]
    h = size // 2
    fshape = (sfft.next_fast_len(ny + 2 * h, real=True), sfft.next_fast_len(nx + 2 * h, real=True))
    buf = np.zeros(fshape, dtype=np.float32)
    buf[h : h + ny, h : h + nx] = template
    t_hat = sfft.rfft2(buf, workers=workers)
    del buf
    u = (2.0 * np.arange(nx) / max(nx - 1, 1) - 1.0).astype(np.float32)
    v = (2.0 * np.arange(ny) / max(ny - 1, 1) - 1.0).astype(np.float32)
    out = np.zeros((ny, nx), dtype=np.float32)
    order = solution.spatial_order
    powers = [(0, 0)] + [(d - i, i) for d in range(1, order + 1) for i in range(d + 1)]
    for k, (pu, pv) in zip(kj, powers, strict=True):
        k_hat = sfft.rfft2(k.astype(np.float32), s=fshape, workers=workers)
        k_hat *= t_hat
        conv = sfft.irfft2(k_hat, s=fshape, workers=workers)[2 * h : 2 * h + ny, 2 * h : 2 * h + nx]
        if pu == 0 and pv == 0:
            out += conv
        else:
            out += conv * (v[:, None] ** pv) * (u[None, :] ** pu)
    return out


def alard_lupton_subtract(
    science: np.ndarray,
    science_var: np.ndarray,
    science_mask: np.ndarray,
    template: np.ndarray,
    template_var: np.ndarray,
    template_mask: np.ndarray,
    psf_science: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    size: int = 21,
    spatial_order: int = 1,
    workers: int = 1,
) -> tuple[ZogyResult, KernelSolution]:
    """D = S − T ⊗ K − b, in science units; the template must be sharper than the science.

    Returned as a ``ZogyResult`` (the pipeline's difference-image type): ``psf`` is the
    science PSF, ``kernel_template`` the matching kernel at the CCD centre and
    ``kernel_science`` a delta. Variance: var_S + var_T·ΣK², exact for smooth variance.
    """
    if science.shape != template.shape:
        raise ValueError("science and template shapes differ")
    ny, nx = science.shape
    union = np.asarray(science_mask | template_mask, dtype=mk.MASK_DTYPE)
    bad = (union & mk.NO_DATA) != 0
    tclean = np.where(bad, 0.0, template).astype(np.float32)
    sol = fit_kernel(science, science_var, tclean, union, xs, ys, size=size,
                     spatial_order=spatial_order)  # fmt: skip
    conv = convolve_spatial(tclean, sol, workers)
    yy, xx = np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32)
    u = 2.0 * xx / max(nx - 1, 1) - 1.0
    v = 2.0 * yy / max(ny - 1, 1) - 1.0
    bg = np.float32(sol.background[0])
    if len(sol.background) >= 3:
        bg = (
            bg
            + np.float32(sol.background[1]) * u[None, :]
            + np.float32(sol.background[2]) * v[:, None]
        )
    diff = np.asarray(science, dtype=np.float32) - conv
    diff -= bg
    kc = sol.kernel_at(nx / 2, ny / 2)
    var = np.asarray(science_var, dtype=np.float32) + np.asarray(
        template_var, dtype=np.float32
    ) * np.float32((kc**2).sum())
    union &= ~np.int32(mk.DETECTED | mk.DETECTED_NEGATIVE)
    diff[bad] = 0.0
    var[bad] = np.inf
    delta = np.zeros((size, size), dtype=np.float32)
    delta[size // 2, size // 2] = 1.0
    res = ZogyResult(
        image=diff, variance=var, mask=union, psf=psf_science / psf_science.sum(),
        kernel_science=delta, kernel_template=kc.astype(np.float32),
        sigma_science=float(np.sqrt(np.median(science_var[::8, ::8]))),
        sigma_template=float(np.sqrt(np.median(template_var[::8, ::8]))),
        fft_shape=(ny, nx),
    )  # fmt: skip
    return res, sol
