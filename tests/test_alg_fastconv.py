"""The hand-written separable convolution against scipy.ndimage on the same taps."""

import numpy as np
import pytest
from scipy import ndimage

from algorithms.fastconv import gaussian_smooth, gaussian_taps, separable_convolve


@pytest.mark.parametrize("shape", [(64, 80), (7, 40), (40, 5)])
@pytest.mark.parametrize("sigma", [0.8, 1.9, 3.0])
@pytest.mark.parametrize("nearest", [False, True])
def test_gaussian_smooth_matches_ndimage(
    shape: tuple[int, int], sigma: float, nearest: bool
) -> None:
    rng = np.random.default_rng(7)
    img = rng.normal(100.0, 10.0, shape).astype(np.float32)
    img[3, 2] = 5000.0
    got = gaussian_smooth(img, sigma, nearest=nearest)
    mode = "nearest" if nearest else "constant"
    want = ndimage.gaussian_filter(img.astype(np.float64), sigma, mode=mode, truncate=3.5)
    assert got.dtype == np.float32 and got.shape == img.shape
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-3)


def test_separable_convolve_rejects_bad_taps() -> None:
    img = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="odd"):
        separable_convolve(img, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="symmetric"):
        separable_convolve(img, np.array([0.2, 0.5, 0.3], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        separable_convolve(np.ones(8, np.float32), gaussian_taps(1.0))
