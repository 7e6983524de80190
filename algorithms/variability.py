"""Light-curve features of DIAObjects from their full DIASource and DIAForcedSource history.

The per-band features Rubin's DiaObject table defines in newer ``apdb.yaml`` versions (as
computed by ``ap_association``'s DiaCalculation plugins), vectorised over every object at once:

* ``psfFluxNdata``: points used; ``psfFluxMean``/``MeanErr``: inverse-variance weighted mean and
  its standard error; ``psfFluxSigma``: sample standard deviation (ddof 1, n >= 2);
  ``psfFluxChi2``: sum of ((flux - weighted mean) / err)^2;
* ``psfFluxLinearSlope`` (nJy/day) and ``psfFluxLinearIntercept`` (at MJD 0): weighted least
  squares of flux on ``midpointMjdTai`` (n >= 2 at two distinct times);
* ``psfFluxMAD``: median |flux - median| (unscaled); ``psfFluxSkew``: bias-corrected sample
  skewness (``scipy.stats.skew(bias=False)``, n >= 3); ``psfFluxPercentile05..95`` (linear);
* ``psfFluxStetsonJ``: Stetson (1996) J for unpaired observations, about the iteratively
  reweighted Stetson mean (n >= 2);
* ``fpFluxMean``/``MeanErr``/``Sigma``/``Chi2``: the same for forced photometry.

A point is used only when its flux, error and time are finite and its error is positive;
anything else is ignored, never propagated. Undefined features are NaN. Rows are grouped by one
sort per feature family; every statistic is a ``bincount`` or a gather over the sorted rows.
"""

from __future__ import annotations

import numpy as np

from algorithms.association import Columns
from algorithms.association_summary import BANDS, _segment_reduce, _weighted, band_index

PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)
PSF_FEATURES: tuple[str, ...] = (
    "psfFluxNdata",
    "psfFluxMean",
    "psfFluxMeanErr",
    "psfFluxSigma",
    "psfFluxChi2",
    "psfFluxLinearSlope",
    "psfFluxLinearIntercept",
    "psfFluxMAD",
    "psfFluxSkew",
    *(f"psfFluxPercentile{p:02d}" for p in PERCENTILES),
    "psfFluxStetsonJ",
)
FP_FEATURES: tuple[str, ...] = ("fpFluxMean", "fpFluxMeanErr", "fpFluxSigma", "fpFluxChi2")
OBJECT_COLUMNS: tuple[str, ...] = ("nDiaSources", "firstMjdTai", "lastMjdTai")
#: Integer-valued outputs (everything else is float64).
INT_COLUMNS = frozenset({"nDiaSources", *(f"{b}_psfFluxNdata" for b in BANDS)})
STETSON_ITERATIONS = 20
STETSON_TOL = 1e-6


def feature_names() -> list[str]:
    """Every output column of :func:`characterize` except ``diaObjectId``, in table order."""
    per_band = [f"{b}_{f}" for b in BANDS for f in (*PSF_FEATURES, *FP_FEATURES)]
    return [*OBJECT_COLUMNS, *per_band]


def _valid(*arrays: np.ndarray, err: np.ndarray) -> np.ndarray:
    ok = np.isfinite(err) & (err > 0)
    for a in arrays:
        ok &= np.isfinite(a)
    return ok


def _sum(key: np.ndarray, weights: np.ndarray, n_keys: int) -> np.ndarray:
    """Float64 sums of ``weights`` per key (``bincount`` is integer when there are no rows)."""
    return np.bincount(key, weights=weights, minlength=n_keys).astype(np.float64)


def _group_starts(key: np.ndarray) -> np.ndarray:
    """First row of each run of equal keys in ``key`` (sorted)."""
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, key[1:] != key[:-1]])


def _quantile(key: np.ndarray, x: np.ndarray, n_keys: int, q: float) -> np.ndarray:
    """Linear-interpolated quantile ``q`` per key of ``x`` sorted by (key, x); NaN if empty."""
    out = np.full(n_keys, np.nan)
    starts = _group_starts(key)
    if len(starts) == 0:
        return out
    counts = np.diff(np.r_[starts, len(key)])
    pos = q * (counts - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts - 1)
    frac = pos - lo
    a, b = x[starts + lo], x[starts + hi]
    out[key[starts]] = a + (b - a) * frac
    return out


def _stetson_mean(
    key: np.ndarray,
    n_keys: int,
    x: np.ndarray,
    err: np.ndarray,
    start: np.ndarray,
    factor: np.ndarray,
) -> np.ndarray:
    """Stetson's reweighted mean (alpha = beta = 2), iterated per key until it settles."""
    inv_var = 1.0 / err**2
    mean = start.copy()
    active = np.isfinite(mean)
    for _ in range(STETSON_ITERATIONS):
        if not active.any():
            break
        chi = np.abs(factor[key] * (x - mean[key]) / err)
        w = inv_var / (1.0 + (chi / 2.0) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            new = _sum(key, w * x, n_keys) / _sum(key, w, n_keys)
        diff = np.abs(new - mean)
        mean = np.where(active, new, mean)
        active &= ~((diff < STETSON_TOL) & (diff < STETSON_TOL * np.abs(new)))
    return mean


def _moments(
    key: np.ndarray, n_keys: int, x: np.ndarray, err: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Count, weighted mean and error, plain mean, sample sigma and chi2 per key."""
    n = np.bincount(key, minlength=n_keys)
    mean, mean_err = _weighted(key, n_keys, x, err)
    mean_err[n == 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        plain = _sum(key, x, n_keys) / n
        dev = x - plain[key]
        sigma = np.sqrt(_sum(key, dev**2, n_keys) / (n - 1))
    sigma[n < 2] = np.nan
    chi2 = _sum(key, ((x - mean[key]) / err) ** 2, n_keys)
    chi2[n == 0] = np.nan
    return n, mean, mean_err, plain, sigma, chi2


def psf_features(
    key: np.ndarray, n_keys: int, time: np.ndarray, flux: np.ndarray, err: np.ndarray
) -> Columns:
    """:data:`PSF_FEATURES` per key (0..n_keys-1) of a light curve; rows with key < 0 ignored."""
    key, time = np.asarray(key, dtype=np.int64), np.asarray(time, dtype=np.float64)
    flux, err = np.asarray(flux, dtype=np.float64), np.asarray(err, dtype=np.float64)
    ok = _valid(time, flux, err=err) & (key >= 0)
    order = np.lexsort((flux[ok], key[ok]))
    key, t, x, e = key[ok][order], time[ok][order], flux[ok][order], err[ok][order]
    n, mean, mean_err, plain, sigma, chi2 = _moments(key, n_keys, x, e)
    out: Columns = {
        "psfFluxNdata": n.astype(np.int32),
        "psfFluxMean": mean,
        "psfFluxMeanErr": mean_err,
        "psfFluxSigma": sigma,
        "psfFluxChi2": chi2,
    }

    w = 1.0 / e**2
    with np.errstate(invalid="ignore", divide="ignore"):
        tbar = _sum(key, w * t, n_keys) / _sum(key, w, n_keys)
        dt = t - tbar[key]
        stt = _sum(key, w * dt**2, n_keys)
        sty = _sum(key, w * dt * (x - mean[key]), n_keys)
        slope = sty / stt
    spread = _segment_reduce(np.maximum, key, t, n_keys, -np.inf) > _segment_reduce(
        np.minimum, key, t, n_keys, np.inf
    )
    slope[~spread] = np.nan
    out["psfFluxLinearSlope"] = slope
    out["psfFluxLinearIntercept"] = mean - slope * tbar

    median = _quantile(key, x, n_keys, 0.5)
    absdev = np.abs(x - median[key])
    out["psfFluxMAD"] = _quantile(key, absdev[np.lexsort((absdev, key))], n_keys, 0.5)

    dev = x - plain[key]
    with np.errstate(invalid="ignore", divide="ignore"):
        m2 = _sum(key, dev**2, n_keys) / n
        m3 = _sum(key, dev**3, n_keys) / n
        skew = m3 / m2**1.5 * np.sqrt(n * (n - 1.0)) / (n - 2.0)
    flat = m2 <= (np.finfo(np.float64).resolution * plain) ** 2
    skew[(n < 3) | flat] = np.nan
    out["psfFluxSkew"] = skew
    for p in PERCENTILES:
        out[f"psfFluxPercentile{p:02d}"] = _quantile(key, x, n_keys, p / 100.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.sqrt(n / (n - 1.0))
    factor[n < 2] = np.nan
    start = np.where(n >= 2, mean, np.nan)
    smean = _stetson_mean(key, n_keys, x, e, start, factor)
    pk = (factor[key] * (x - smean[key]) / e) ** 2 - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        j = _sum(key, np.sign(pk) * np.sqrt(np.abs(pk)), n_keys) / n
    j[n < 2] = np.nan
    out["psfFluxStetsonJ"] = j
    return out


def fp_features(key: np.ndarray, n_keys: int, flux: np.ndarray, err: np.ndarray) -> Columns:
    """:data:`FP_FEATURES` per key of forced photometry; rows with key < 0 ignored."""
    key = np.asarray(key, dtype=np.int64)
    flux, err = np.asarray(flux, dtype=np.float64), np.asarray(err, dtype=np.float64)
    ok = _valid(flux, err=err) & (key >= 0)
    _, mean, mean_err, _, sigma, chi2 = _moments(key[ok], n_keys, flux[ok], err[ok])
    return {"fpFluxMean": mean, "fpFluxMeanErr": mean_err, "fpFluxSigma": sigma, "fpFluxChi2": chi2}


def _index_of(object_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` in ``object_ids`` (any order, unique); -1 if absent."""
    if len(object_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    lookup = np.argsort(object_ids)
    ids_sorted = object_ids[lookup]
    pos = np.clip(np.searchsorted(ids_sorted, ids), 0, len(ids_sorted) - 1)
    return np.where(ids_sorted[pos] == ids, lookup[pos], -1)


def characterize(
    object_ids: np.ndarray, sources: Columns, forced: Columns | None = None
) -> Columns:
    """``diaObjectId`` and :func:`feature_names` columns for ``object_ids`` (in that order).

    ``sources`` needs diaObjectId, midpointMjdTai, band, psfFlux, psfFluxErr; ``forced`` needs
    diaObjectId, band, psfFlux, psfFluxErr. Rows of other objects or bands are ignored.
    """
    object_ids = np.asarray(object_ids, dtype=np.int64)
    if len(np.unique(object_ids)) != len(object_ids):
        raise ValueError("object_ids must be unique")
    n, nb = len(object_ids), len(BANDS)
    oi = _index_of(object_ids, np.asarray(sources["diaObjectId"], dtype=np.int64))
    t = np.asarray(sources["midpointMjdTai"], dtype=np.float64)
    out: Columns = {"diaObjectId": object_ids}
    seen = oi >= 0
    out["nDiaSources"] = np.bincount(oi[seen], minlength=n).astype(np.int32)
    tk, tv = oi[seen & np.isfinite(t)], t[seen & np.isfinite(t)]
    order = np.argsort(tk, kind="stable")
    out["firstMjdTai"] = _segment_reduce(np.minimum, tk[order], tv[order], n, np.inf)
    out["lastMjdTai"] = _segment_reduce(np.maximum, tk[order], tv[order], n, -np.inf)

    b = band_index(np.asarray(sources["band"]))
    key = np.where(seen & (b >= 0), oi * nb + b, -1)
    psf = psf_features(key, n * nb, t, sources["psfFlux"], sources["psfFluxErr"])
    if forced is not None and len(forced["diaObjectId"]):
        fo = _index_of(object_ids, np.asarray(forced["diaObjectId"], dtype=np.int64))
        fb = band_index(np.asarray(forced["band"]))
        fkey = np.where((fo >= 0) & (fb >= 0), fo * nb + fb, -1)
        fp = fp_features(fkey, n * nb, forced["psfFlux"], forced["psfFluxErr"])
    else:
        fp = fp_features(np.zeros(0, dtype=np.int64), n * nb, np.zeros(0), np.zeros(0))
    for k, band in enumerate(BANDS):
        for name, values in (*psf.items(), *fp.items()):
            out[f"{band}_{name}"] = values.reshape(n, nb)[:, k]
    return out
