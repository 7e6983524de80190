"""Light-curve features (``algorithms.variability``): hand-computed cases, bad inputs, and a
per-object numpy/scipy reference on seeded random light curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from algorithms.association_summary import BANDS
from algorithms.variability import (
    FP_FEATURES,
    PERCENTILES,
    PSF_FEATURES,
    characterize,
    feature_names,
    fp_features,
    psf_features,
)


def one_band(t: list[float], flux: list[float], err: list[float]) -> dict[str, float]:
    out = psf_features(
        np.zeros(len(t), dtype=np.int64), 1, np.array(t), np.array(flux), np.array(err)
    )
    return {k: float(v[0]) for k, v in out.items()}


def test_a_hand_computed_light_curve() -> None:
    f = one_band([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert f["psfFluxNdata"] == 3
    assert f["psfFluxMean"] == pytest.approx(2.0)
    assert f["psfFluxMeanErr"] == pytest.approx(1 / math.sqrt(3))
    assert f["psfFluxSigma"] == pytest.approx(1.0)
    assert f["psfFluxChi2"] == pytest.approx(2.0)
    assert f["psfFluxLinearSlope"] == pytest.approx(1.0)
    assert f["psfFluxLinearIntercept"] == pytest.approx(1.0)
    assert f["psfFluxMAD"] == pytest.approx(1.0)
    assert f["psfFluxSkew"] == pytest.approx(0.0, abs=1e-12)
    expected = {5: 1.1, 25: 1.5, 50: 2.0, 75: 2.5, 95: 2.9}
    for p in PERCENTILES:
        assert f[f"psfFluxPercentile{p:02d}"] == pytest.approx(expected[p])
    # Symmetric points keep the Stetson mean at 2: P = (1.5, -1, 1.5) - 1.
    assert f["psfFluxStetsonJ"] == pytest.approx((2 * math.sqrt(0.5) - 1) / 3)


def test_weights_shift_the_mean_and_the_fit() -> None:
    f = one_band([10.0, 20.0], [0.0, 10.0], [1.0, 2.0])
    assert f["psfFluxMean"] == pytest.approx(10.0 * 0.25 / 1.25)
    assert f["psfFluxMeanErr"] == pytest.approx(1 / math.sqrt(1.25))
    assert f["psfFluxLinearSlope"] == pytest.approx(1.0)  # two points: the line through them
    assert f["psfFluxLinearIntercept"] == pytest.approx(-10.0)
    assert f["psfFluxChi2"] == pytest.approx(2.0**2 + (8.0 / 2.0) ** 2)
    assert math.isnan(f["psfFluxSkew"])


def test_undefined_features_are_nan() -> None:
    single = one_band([5.0], [7.0], [0.5])
    assert single["psfFluxNdata"] == 1 and single["psfFluxMean"] == pytest.approx(7.0)
    assert single["psfFluxChi2"] == 0.0 and single["psfFluxMAD"] == 0.0
    assert single["psfFluxPercentile05"] == single["psfFluxPercentile95"] == 7.0
    for name in ("psfFluxSigma", "psfFluxLinearSlope", "psfFluxSkew", "psfFluxStetsonJ"):
        assert math.isnan(single[name]), name
    same_time = one_band([5.0, 5.0], [1.0, 3.0], [1.0, 1.0])
    assert math.isnan(same_time["psfFluxLinearSlope"])
    assert math.isnan(same_time["psfFluxLinearIntercept"])
    assert same_time["psfFluxSigma"] == pytest.approx(math.sqrt(2))
    flat = one_band([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [1.0, 1.0, 1.0])
    assert math.isnan(flat["psfFluxSkew"]) and flat["psfFluxSigma"] == 0.0
    empty = psf_features(np.zeros(0, dtype=np.int64), 2, np.zeros(0), np.zeros(0), np.zeros(0))
    assert list(empty["psfFluxNdata"]) == [0, 0]
    for name in PSF_FEATURES:
        if name != "psfFluxNdata":
            assert np.isnan(empty[name]).all(), name


def test_bad_points_are_ignored_not_propagated() -> None:
    good = one_band([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    t = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan]
    flux = [1.0, 2.0, 3.0, np.nan, np.inf, 50.0, 60.0, 70.0]
    err = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, -2.0, 1.0]
    mixed = one_band(t, flux, err)
    assert mixed.keys() == good.keys()
    for name, value in good.items():
        assert mixed[name] == pytest.approx(value, nan_ok=True), name
    forced = fp_features(np.zeros(4, dtype=np.int64), 1, np.array([1.0, 3.0, np.nan, 9.0]),
                         np.array([1.0, 1.0, 1.0, np.inf]))  # fmt: skip
    assert forced["fpFluxMean"][0] == pytest.approx(2.0)
    assert forced["fpFluxSigma"][0] == pytest.approx(math.sqrt(2))
    assert forced["fpFluxChi2"][0] == pytest.approx(2.0)


def test_characterize_maps_objects_bands_and_history() -> None:
    sources = {
        "diaObjectId": np.array([7, 7, 7, 3, 9, 7]),
        "midpointMjdTai": np.array([60001.0, 60002.0, 60003.0, 60010.0, 60000.0, 60005.0]),
        "band": np.array(["g", "g", "g", "r", "r", "x"], dtype=object),
        "psfFlux": np.array([1.0, 2.0, 3.0, 5.0, 8.0, 100.0]),
        "psfFluxErr": np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    }
    forced = {
        "diaObjectId": np.array([3, 3, 9]),
        "band": np.array(["r", "r", "r"], dtype=object),
        "psfFlux": np.array([4.0, 6.0, 1.0]),
        "psfFluxErr": np.array([1.0, 1.0, 1.0]),
    }
    out = characterize(np.array([7, 3, 11]), sources, forced)
    assert set(out) == {"diaObjectId", *feature_names()}
    assert list(out["diaObjectId"]) == [7, 3, 11]
    assert list(out["nDiaSources"]) == [4, 1, 0]  # object 9 is not asked for
    np.testing.assert_array_equal(out["firstMjdTai"], [60001.0, 60010.0, np.nan])
    np.testing.assert_array_equal(out["lastMjdTai"], [60005.0, 60010.0, np.nan])
    assert list(out["g_psfFluxNdata"]) == [3, 0, 0]  # band "x" is ignored
    assert out["g_psfFluxLinearSlope"][0] == pytest.approx(1.0)
    assert out["r_psfFluxMean"][1] == 5.0 and np.isnan(out["r_psfFluxMean"][0])
    assert out["r_fpFluxMean"][1] == pytest.approx(5.0)
    assert out["r_fpFluxSigma"][1] == pytest.approx(math.sqrt(2))
    assert np.isnan(out["r_fpFluxMean"][[0, 2]]).all()
    assert characterize(np.array([7]), sources)["g_fpFluxMean"].tolist() == [
        pytest.approx(np.nan, nan_ok=True)
    ]
    with pytest.raises(ValueError, match="unique"):
        characterize(np.array([7, 7]), sources)


def stetson_j(x: np.ndarray, e: np.ndarray) -> float:
    """ap_association's Stetson J, written per object as a plain loop."""
    n = len(x)
    factor = math.sqrt(n / (n - 1))
    w = 1 / e**2
    mean = float(np.average(x, weights=w))
    for _ in range(20):
        chi = np.abs(factor * (x - mean) / e)
        new = float(np.average(x, weights=w / (1 + (chi / 2) ** 2)))
        diff = abs(new - mean)
        mean = new
        if diff < 1e-6 and diff < 1e-6 * abs(new):
            break
    p = (factor * (x - mean) / e) ** 2 - 1
    return float(np.mean(np.sign(p) * np.sqrt(np.abs(p))))


def reference(t: np.ndarray, x: np.ndarray, e: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(t) & np.isfinite(x) & np.isfinite(e) & (e > 0)
    t, x, e = t[ok], x[ok], e[ok]
    n = len(x)
    nan = float("nan")
    out = {"psfFluxNdata": float(n)}
    if n == 0:
        return out | {k: nan for k in PSF_FEATURES if k != "psfFluxNdata"}
    w = 1 / e**2
    mean = float(np.average(x, weights=w))
    out |= {
        "psfFluxMean": mean,
        "psfFluxMeanErr": float(1 / np.sqrt(w.sum())),
        "psfFluxSigma": float(np.std(x, ddof=1)) if n > 1 else nan,
        "psfFluxChi2": float((((x - mean) / e) ** 2).sum()),
        "psfFluxMAD": float(stats.median_abs_deviation(x, scale=1.0)),
        "psfFluxSkew": float(stats.skew(x, bias=False)) if n > 2 else nan,
        "psfFluxStetsonJ": stetson_j(x, e) if n > 1 else nan,
    }
    for p in PERCENTILES:
        out[f"psfFluxPercentile{p:02d}"] = float(np.percentile(x, p))
    if n > 1 and np.ptp(t) > 0:
        slope, intercept = np.polyfit(t, x, 1, w=1 / e)
        out |= {"psfFluxLinearSlope": slope, "psfFluxLinearIntercept": intercept}
    else:
        out |= {"psfFluxLinearSlope": nan, "psfFluxLinearIntercept": nan}
    return out


def test_matches_a_per_object_reference_on_random_light_curves() -> None:
    rng = np.random.default_rng(20251121)
    n_obj, n_rows = 300, 6000
    ids = rng.choice(np.arange(10**9, 10**9 + 10**6), n_obj, replace=False)
    obj = ids[rng.integers(0, n_obj, n_rows)]
    band = np.array(BANDS)[rng.integers(0, len(BANDS), n_rows)].astype(object)
    t = 60000 + rng.uniform(0, 400, n_rows)
    base_flux = rng.lognormal(7, 1, n_obj)
    amp = rng.uniform(0, 0.5, n_obj)
    pos = np.searchsorted(np.sort(ids), obj)
    x = base_flux[pos] * (1 + amp[pos] * np.sin(t / 7.0)) + rng.standard_t(3, n_rows) * 50
    e = rng.uniform(20, 80, n_rows)
    bad = rng.random(n_rows)
    x[bad < 0.02] = np.nan
    e[(bad >= 0.02) & (bad < 0.03)] = 0.0
    e[(bad >= 0.03) & (bad < 0.04)] = -1.0
    x[(bad >= 0.04) & (bad < 0.045)] = np.inf
    sources = {"diaObjectId": obj, "midpointMjdTai": t, "band": band, "psfFlux": x,
               "psfFluxErr": e}  # fmt: skip
    f_obj = ids[rng.integers(0, n_obj, 3000)]
    f_band = np.array(BANDS)[rng.integers(0, len(BANDS), 3000)].astype(object)
    f_x = rng.normal(1000, 100, 3000)
    f_e = rng.uniform(10, 30, 3000)
    f_x[:30] = np.nan
    forced = {"diaObjectId": f_obj, "band": f_band, "psfFlux": f_x, "psfFluxErr": f_e}
    out = characterize(ids, sources, forced)
    checked = 0
    for i, oid in enumerate(ids):
        assert out["nDiaSources"][i] == (obj == oid).sum()
        for b in BANDS:
            sel = (obj == oid) & (band == b)
            ref = reference(t[sel], x[sel], e[sel])
            for name, value in ref.items():
                got = float(out[f"{b}_{name}"][i])
                assert got == pytest.approx(value, rel=1e-7, abs=1e-7, nan_ok=True), (oid, b, name)
            fsel = (f_obj == oid) & (f_band == b) & np.isfinite(f_x)
            fx, fe = f_x[fsel], f_e[fsel]
            if len(fx):
                fmean = np.average(fx, weights=1 / fe**2)
                assert out[f"{b}_fpFluxMean"][i] == pytest.approx(fmean, rel=1e-9)
                assert out[f"{b}_fpFluxMeanErr"][i] == pytest.approx(1 / np.sqrt((fe**-2).sum()))
                assert out[f"{b}_fpFluxChi2"][i] == pytest.approx((((fx - fmean) / fe) ** 2).sum())
                sigma = np.std(fx, ddof=1) if len(fx) > 1 else np.nan
                assert out[f"{b}_fpFluxSigma"][i] == pytest.approx(sigma, nan_ok=True)
            else:
                assert all(np.isnan(out[f"{b}_{k}"][i]) for k in FP_FEATURES)
            checked += int(ref["psfFluxNdata"] >= 3)
    assert checked > 500  # most object-bands have enough points for every feature
