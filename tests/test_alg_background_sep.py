"""The SEP background (the product's) beside the hand-written one, on a product sky."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import algorithms.pipeline as pipeline
from algorithms import mask as mk
from algorithms.background import BackgroundModel, fit_background
from base.ccd_inputs import NightDirectoryRepository
from base.ccd_processing import CcdProcessing
from summit.night_files import open_night


@pytest.fixture(scope="module")
def product_backgrounds(mini_night: Path) -> dict[str, Any]:
    """The images the CCD chain hands to ``fit_background`` for one CCD of the tests' mini
    night (science twice, then the difference), and the simulator's noiseless sources."""
    src = open_night(mini_night)
    v = src.visits[1]
    adapter = CcdProcessing(NightDirectoryRepository(mini_night), make_cutouts=False)
    pre = adapter.preload(src.visit_info(v), 0)
    hdul, truth = src.simulator().render(v, 0)
    calls: list[tuple[np.ndarray, np.ndarray, int]] = []
    real = pipeline.fit_background

    def record(image: np.ndarray, mask: np.ndarray, cell: int = 256, **kw: Any) -> Any:
        calls.append((image.copy(), mask.copy(), cell))
        return real(image, mask, cell, **kw)

    def clipped(image: np.ndarray, mask: np.ndarray, cell: int = 256, **kw: Any) -> Any:
        return real(image, mask, cell, method="clipped", **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "fit_background", record)
        out = adapter.process(hdul, pre)
        mp.setattr(pipeline, "fit_background", clipped)
        hand = adapter.process(src.simulator().render(v, 0)[0], pre)
    assert out.ok and hand.ok, (out.reason, hand.reason)
    return {
        "calls": calls,
        "sources_e": src.simulator().electrons(v, 0, truth),
        "dia": {"sep": out.diasources, "clipped": hand.diasources},
    }


def test_the_chain_finds_the_same_diasources_with_either_background(
    product_backgrounds: dict[str, Any],
) -> None:
    sepd, hand = product_backgrounds["dia"]["sep"], product_backgrounds["dia"]["clipped"]
    assert len(hand) >= 2 and len(sepd) == len(hand)
    order_s, order_h = np.lexsort((sepd["y"], sepd["x"])), np.lexsort((hand["y"], hand["x"]))
    a, b = sepd[order_s], hand[order_h]
    assert np.allclose(a["x"], b["x"], atol=0.05) and np.allclose(a["y"], b["y"], atol=0.05)
    assert np.all(np.abs(a["psfFlux"] - b["psfFlux"]) < 0.2 * b["psfFluxErr"])


def _sigma(img: np.ndarray, mask: np.ndarray) -> float:
    z = img[(mask & mk.UNUSABLE) == 0][::5]
    return float(1.4826 * np.median(np.abs(z - np.median(z))))


def test_sep_background_equals_the_hand_written_one_on_a_product_sky(
    product_backgrounds: dict[str, Any],
) -> None:
    calls = product_backgrounds["calls"]
    assert len(calls) == 3  # science before and after cosmic rays, difference
    for img, msk, cell in calls:
        sigma = _sigma(img, msk)
        hand = fit_background(img, msk, cell, method="clipped")
        sepm = fit_background(img, msk, cell)
        assert sepm.values.shape == hand.values.shape
        d = sepm.evaluate() - hand.evaluate()
        assert np.sqrt(np.mean(d**2)) < 0.05 * sigma, np.sqrt(np.mean(d**2)) / sigma
        assert np.abs(d).max() < 0.25 * sigma, np.abs(d).max() / sigma
        # The persisted grid rebuilds the subtracted background.
        rebuilt = BackgroundModel(sepm.xc, sepm.yc, sepm.values, sepm.shape).evaluate()
        assert np.abs(rebuilt - sepm.evaluate()).max() < 0.25 * sigma
        assert np.sqrt(np.mean((rebuilt - sepm.evaluate()) ** 2)) < 0.05 * sigma


def test_sep_background_is_as_close_to_the_true_sky(product_backgrounds: dict[str, Any]) -> None:
    """Image − model − true source electrons, median per 64×64 block: the sky error left."""
    img, msk, cell = product_backgrounds["calls"][1]
    good = (msk & mk.UNUSABLE) == 0
    sigma = _sigma(img, msk)
    rms = {}
    for method in ("clipped", "sep"):
        r = img - fit_background(img, msk, cell, method=method).evaluate()
        r = np.where(good, r - product_backgrounds["sources_e"], np.nan)
        blocks = r.reshape(8, 64, 8, 64).transpose(0, 2, 1, 3).reshape(8, 8, -1)
        rms[method] = float(np.sqrt(np.nanmean(np.nanmedian(blocks, axis=2) ** 2))) / sigma
    assert rms["sep"] < 0.06
    assert rms["sep"] <= rms["clipped"] * 1.1 + 0.002, rms


def test_sep_background_leaves_out_masked_and_non_finite_pixels() -> None:
    rng = np.random.default_rng(3)
    img = rng.normal(200.0, 5.0, (300, 520)).astype(np.float32)
    msk = mk.new_mask(img.shape)
    img[:, :40] = 1e6
    msk[:, :40] |= mk.SAT
    img[100:110, 300:310] = np.nan
    bkg = fit_background(img[:, ::1], msk, cell=128)
    assert bkg.values.shape == (3, 5)
    assert np.all(np.isfinite(bkg.evaluate()))
    assert np.abs(bkg.evaluate()[:, 60:] - 200.0).max() < 1.0
    assert np.all(np.diff(bkg.xc) > 0) and bkg.xc[-1] <= 519 and bkg.yc[-1] <= 299
    # Non-contiguous and float64 input give the same model.
    again = fit_background(np.asfortranarray(img.astype(np.float64)), msk, cell=128)
    assert np.allclose(again.values, bkg.values, atol=1e-3)


def test_mostly_masked_image_falls_back_to_the_clipped_estimator() -> None:
    """SEP would leave out every mesh under half usable (and return 0): the clipped path runs."""
    rng = np.random.default_rng(4)
    img = rng.normal(300.0, 5.0, (256, 256)).astype(np.float32)
    msk = mk.new_mask(img.shape)
    msk[:, ::3] |= mk.DETECTED
    msk[:, 1::3] |= mk.BAD
    bkg = fit_background(img, msk, cell=64)
    assert bkg.full is None
    assert np.abs(bkg.evaluate() - 300.0).max() < 2.0
    ref = fit_background(img, msk, cell=64, method="clipped")
    assert np.array_equal(bkg.values, ref.values, equal_nan=True)


def test_background_bad_input_is_refused() -> None:
    img = np.ones((64, 64), np.float32)
    msk = mk.new_mask(img.shape)
    with pytest.raises(ValueError, match="no usable pixels"):
        fit_background(img, msk | mk.NO_DATA, cell=32)
    with pytest.raises(ValueError, match="no usable pixels"):
        fit_background(np.full((64, 64), np.nan, np.float32), msk, cell=32)
    with pytest.raises(ValueError, match="unknown background method"):
        fit_background(img, msk, cell=32, method="median")
    with pytest.raises(ValueError, match="same shape"):
        fit_background(img, msk[:10], cell=32)
    with pytest.raises(ValueError, match="≥ 8"):
        fit_background(img, msk, cell=4)
