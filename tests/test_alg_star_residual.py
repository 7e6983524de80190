"""The star-residual columns: a real few-per-cent change of a bright star against what the
star's subtraction leaves (a PSF-width mismatch ring, a registration dipole), on small images."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.diasource import DIASOURCE_DTYPE
from algorithms.psf import KernelPsf, gaussian_kernel
from algorithms.star_residual import STAR_COLUMNS, drop_star_residuals, star_residual_columns

SIGMA = 2.0
SIZE = 41
N = 96
STAR = (48.3, 47.6)
STAR_FLUX = 2.0e6  # counts
EPS = 0.005  # the CCD's PSF-flux model error
NOISE = 10.0  # counts per pixel


def _psf_image(sigma: float, x: float, y: float, flux: float) -> np.ndarray:
    yy, xx = np.mgrid[0:N, 0:N]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return flux * g / g.sum()


def _measure(diff: np.ndarray, at: list[tuple[float, float, float]]) -> dict[str, np.ndarray]:
    dia = np.zeros(len(at), DIASOURCE_DTYPE)
    for k, (x, y, f) in enumerate(at):
        dia[k]["x"], dia[k]["y"], dia[k]["psfFlux"] = x, y, f
    var = np.full(diff.shape, NOISE**2, np.float32)
    mask = np.zeros(diff.shape, np.int32)
    psf = KernelPsf(gaussian_kernel(SIGMA, SIZE))
    return star_residual_columns(
        dia, diff, var, mask, psf, 1.0, 1.0, EPS,
        np.array([STAR[0]]), np.array([STAR[1]]), np.array([STAR_FLUX]),
    )  # fmt: skip


@pytest.fixture
def noise() -> np.ndarray:
    return np.random.default_rng(7).normal(0.0, NOISE, (N, N))


def test_a_few_per_cent_change_is_psf_shaped_at_the_star_and_above_its_floor(
    noise: np.ndarray,
) -> None:
    change = 0.04 * STAR_FLUX
    diff = _psf_image(SIGMA, *STAR, change) + noise
    c = _measure(diff, [(STAR[0] + 0.3, STAR[1] - 0.2, change)])
    assert c["starOffset"][0] < 0.3
    assert c["starFluxFraction"][0] == pytest.approx(0.04, rel=0.01)
    assert c["starModelSnr"][0] > 5.0  # 4 % against a 0.5 % floor
    assert c["starFluxRatio"][0] == pytest.approx(1.0, abs=0.05)
    assert c["starPsfCorrelation"][0] > 0.9
    assert c["stampPsfCorrelation"][0] > 0.9
    assert c["stampAsymmetry"][0] < 0.1


def test_a_star_that_dims_looks_like_one_that_brightens(noise: np.ndarray) -> None:
    change = -0.04 * STAR_FLUX
    diff = _psf_image(SIGMA, *STAR, change) + noise
    c = _measure(diff, [(STAR[0] - 0.2, STAR[1] + 0.1, change)])
    assert c["starModelSnr"][0] > 5.0
    assert c["starFluxRatio"][0] == pytest.approx(1.0, abs=0.05)
    assert c["starPsfCorrelation"][0] > 0.9 and c["stampPsfCorrelation"][0] > 0.9


def test_a_psf_width_mismatch_ring_is_not_psf_shaped_and_within_the_floor(
    noise: np.ndarray,
) -> None:
    ring = 0.03 * (_psf_image(SIGMA * 1.15, *STAR, STAR_FLUX) - _psf_image(SIGMA, *STAR, STAR_FLUX))
    diff = ring + noise
    r = np.hypot(*np.meshgrid(np.arange(N) - STAR[0], np.arange(N) - STAR[1]))
    peak = np.unravel_index(np.argmax(np.where(r > 1.5 * SIGMA, ring, -np.inf)), ring.shape)
    x, y = float(peak[1]), float(peak[0])
    c = _measure(diff, [(x, y, float(ring[peak] * 4 * np.pi * SIGMA**2))])
    assert c["starOffset"][0] > 1.5
    assert abs(c["starModelSnr"][0]) < 3.0 or c["starFluxRatio"][0] < 0
    assert c["starPsfCorrelation"][0] < 0.0  # a dark core inside a bright ring
    assert c["stampPsfCorrelation"][0] < 0.9


def test_a_registration_dipole_is_odd_under_rotation(noise: np.ndarray) -> None:
    shifted = _psf_image(SIGMA, STAR[0] + 0.05, STAR[1], STAR_FLUX)
    diff = shifted - _psf_image(SIGMA, *STAR, STAR_FLUX) + noise
    lobe = float(diff.max() * 4 * np.pi * SIGMA**2)
    c = _measure(diff, [(STAR[0], STAR[1], lobe)])
    assert c["stampAsymmetry"][0] > 0.8
    assert abs(c["starPsfCorrelation"][0]) < 0.2


def test_sources_far_from_stars_have_no_star_columns_and_bad_input_is_refused(
    noise: np.ndarray,
) -> None:
    diff = _psf_image(SIGMA, 15.0, 80.0, 5e4) + noise
    c = _measure(diff, [(15.0, 80.0, 5e4)])
    assert set(c) == set(STAR_COLUMNS)
    assert np.isnan(c["starOffset"][0]) and np.isnan(c["starModelSnr"][0])
    assert c["stampPsfCorrelation"][0] > 0.9
    empty = _measure(diff, [])
    assert all(len(v) == 0 for v in empty.values())
    dia = np.zeros(1, DIASOURCE_DTYPE)
    psf = KernelPsf(gaussian_kernel(SIGMA, SIZE))
    with pytest.raises(ValueError, match="shapes differ"):
        star_residual_columns(
            dia, diff, diff[:10], np.zeros(diff.shape, np.int32), psf, 1.0, 1.0, EPS,
            np.zeros(1), np.zeros(1), np.ones(1),
        )  # fmt: skip
    with pytest.raises(ValueError, match="lengths differ"):
        star_residual_columns(
            dia, diff, diff, np.zeros(diff.shape, np.int32), psf, 1.0, 1.0, EPS,
            np.zeros(2), np.zeros(1), np.ones(1),
        )  # fmt: skip


def _rows(diff: np.ndarray, at: list[tuple[float, float, float]]) -> np.ndarray:
    dia = np.zeros(len(at), DIASOURCE_DTYPE)
    for k, (x, y, f) in enumerate(at):
        dia[k]["x"], dia[k]["y"], dia[k]["psfFlux"] = x, y, f
    for name, col in _measure(diff, at).items():
        dia[name] = col
    return dia


def test_what_a_static_star_leaves_is_dropped_and_its_changes_and_neighbours_kept(
    noise: np.ndarray,
) -> None:
    """On comcam the false DIASources on 16-18 mag stars were 0.2-2 % of the star's flux
    (every real change of a star was >= 4.2 %), and the PSF-flux residual at static stars'
    centres was at most 0.9 % of their flux: a floor of 2 % drops what subtraction leaves
    (a 1 % photometric residual, the bright lobe of a width-mismatch ring, a registration
    dipole's lobe) and keeps a 3 % change of either sign, a faint transient 1.5 FWHM from the star
    and a saturated core (a transient within one FWHM of it and under the floor is lost)."""
    floor = 0.02
    off = 1.5 * 2.3548 * SIGMA  # 1.5 FWHM: beside the star, not on it
    f = STAR_FLUX
    shifted = _psf_image(SIGMA, STAR[0] + 0.05, STAR[1], f) - _psf_image(SIGMA, *STAR, f)
    cases = {
        "residual 1 %": (_psf_image(SIGMA, *STAR, 0.01 * f), (*STAR, 0.01 * f)),
        "dipole lobe": (shifted, (STAR[0] + 1.0, STAR[1], 0.006 * f)),
        "+3 %": (_psf_image(SIGMA, *STAR, 0.03 * f), (STAR[0] + 0.3, STAR[1], 0.03 * f)),
        "-3 %": (_psf_image(SIGMA, *STAR, -0.03 * f), (STAR[0], STAR[1] - 0.3, -0.03 * f)),
        "transient beside": (
            _psf_image(SIGMA, STAR[0] + off, STAR[1], 0.005 * f),
            (STAR[0] + off, STAR[1], 0.005 * f),
        ),
    }
    kept = {}
    for name, (image, at) in cases.items():
        dia = _rows(image + noise, [at])
        assert dia["starOffset"][0] < 4.0, name
        kept[name] = len(drop_star_residuals(dia, floor)) == 1
    assert kept == {"residual 1 %": False, "dipole lobe": False, "+3 %": True, "-3 %": True,
                    "transient beside": True}  # fmt: skip
    sat = _rows(_psf_image(SIGMA, *STAR, 0.01 * STAR_FLUX) + noise, [(*STAR, 0.01 * STAR_FLUX)])
    sat["pixelFlags_saturatedCenter"] = True
    assert len(drop_star_residuals(sat, floor)) == 1
    assert len(drop_star_residuals(sat, 0.0)) == 1
