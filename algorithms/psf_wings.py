"""PSF wings: an elliptical Moffat fitted to a PSF core carries it beyond its stamp.

(``algorithms.psf.WingedPsf`` uses it for the fitted model.)

A pixel PSF model is only as large as the stamps it was stacked from. Stars have wings beyond
(a Moffat profile holds ~1 % of the flux beyond three FWHM), and a model normalised inside its
stamp puts that flux in the core: image subtraction then leaves a stamp-shaped residual around
every bright star, and PSF photometry of the stars that calibrate the image is biased. The wing
is modelled analytically: the core's outer profile fixes the Moffat's width, slope and
ellipticity, and the Moffat continues it to a stamp where the missing flux is negligible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares


@dataclass(frozen=True)
class Moffat:
    """``amplitude · (1 + q)^-beta``, q = (x, y)·Q·(x, y) of an ellipse of width ``alpha``."""

    amplitude: float
    alpha: float
    beta: float
    g1: float
    g2: float

    def evaluate(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        g = min(float(np.hypot(self.g1, self.g2)), 0.5)
        phi = 0.5 * np.arctan2(self.g2, self.g1)
        a2 = self.alpha**2 * (1.0 + g) / (1.0 - g)
        b2 = self.alpha**2 * (1.0 - g) / (1.0 + g)
        c, s = np.cos(phi), np.sin(phi)
        q = (
            (c * c / a2 + s * s / b2) * dx * dx
            + 2.0 * c * s * (1.0 / a2 - 1.0 / b2) * dx * dy
            + (s * s / a2 + c * c / b2) * dy * dy
        )
        return self.amplitude * (1.0 + q) ** (-self.beta)


def fit_moffat(kernel: np.ndarray) -> Moffat:
    """Least-squares elliptical Moffat, centred on the stamp, to a centred PSF image.

    The fit uses the pixels within ~1.8 FWHM, where the profile's slope is measured with the
    most signal; further out a stacked stamp is mostly sky noise and sky error, which pull
    the slope (beta) off by tenths.
    """
    k = kernel.astype(np.float64) / kernel.sum()
    c = k.shape[0] // 2
    peak = float(k[c, c])
    fwhm = 2.0 * np.sqrt(float((k >= 0.5 * peak).sum()) / np.pi)
    size = int(np.clip(2 * np.ceil(1.8 * fwhm) + 1, 11, k.shape[0]))
    o = (k.shape[0] - size) // 2
    k = k[o : o + size, o : o + size]
    h = size // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)

    def model(p: np.ndarray) -> np.ndarray:
        return Moffat(p[0] * peak, np.exp(p[1]), 1.0 + np.exp(p[2]), p[3], p[4]).evaluate(xx, yy)

    p0 = np.array([1.0, np.log(0.5 * fwhm + 0.5), np.log(2.0), 0.0, 0.0])
    lo = [0.1, np.log(0.3), np.log(0.2), -0.45, -0.45]
    hi = [10.0, np.log(5.0 * h + 1.0), np.log(20.0), 0.45, 0.45]
    sol = least_squares(lambda p: (model(p) - k).ravel(), p0, bounds=(lo, hi), x_scale="jac")
    p = sol.x
    return Moffat(float(p[0] * peak), float(np.exp(p[1])), 1.0 + float(np.exp(p[2])),
                  float(p[3]), float(p[4]))  # fmt: skip


def wing_size(moffat: Moffat, core_size: int, missing: float = 1e-3, cap: int = 101) -> int:
    """Odd stamp size outside which a circular Moffat of this width holds < ``missing``."""
    beta = max(moffat.beta, 1.2)
    r = moffat.alpha * np.sqrt(missing ** (1.0 / (1.0 - beta)) - 1.0)
    return int(np.clip(2 * int(np.ceil(r)) + 1, core_size, cap))


def wing_image(moffat: Moffat, core_size: int, size: int) -> np.ndarray:
    """The Moffat on a ``size``² stamp, zero inside the central ``core_size``² pixels."""
    h = size // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
    w = moffat.evaluate(xx, yy)
    o = (size - core_size) // 2
    w[o : o + core_size, o : o + core_size] = 0.0
    return w


def extend_kernel(kernel: np.ndarray, size: int | None = None) -> np.ndarray:
    """``kernel`` (normalised inside its stamp) continued by its Moffat wing, summing to 1."""
    n = kernel.shape[0]
    k = kernel.astype(np.float64) / kernel.sum()
    m = fit_moffat(k)
    size = size or wing_size(m, n)
    if size <= n:
        return k
    w = wing_image(m, n, size)
    o = (size - n) // 2
    w[o : o + n, o : o + n] = k
    return w / w.sum()
