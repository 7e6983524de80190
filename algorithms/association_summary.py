"""DIAObject summaries recomputed from their DIASource and DIAForcedSource history, vectorised.

Names and meanings follow the DiaObject table of Rubin's ``apdb.yaml``: inverse-variance
weighted mean position with errors and covariance, and per band the weighted mean PSF flux and
its error, the standard deviation, count, min, max, the maximum slope between consecutive
observations (nJy/day), the mean flux error, and weighted means of the forced (``fp``) and
science-image fluxes. Groups are formed by sorting once; every statistic is a ``bincount`` or a
``reduceat`` over the sorted rows, so the cost is O(n log n) for the whole history.
"""

from __future__ import annotations

import numpy as np

from algorithms.association import Columns

BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
#: Floor for positional errors (deg) used as weights when a source has none (0.1 arcsec).
_POS_ERR_FLOOR_DEG = 0.1 / 3600.0


def band_index(band: np.ndarray) -> np.ndarray:
    """Map band letters to 0..5 (ugrizy); -1 for anything else."""
    out = np.full(len(band), -1, dtype=np.int64)
    for k, b in enumerate(BANDS):
        out[np.asarray(band) == b] = k
    return out


def _weighted(
    key: np.ndarray, n_keys: int, value: np.ndarray, err: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted mean and its standard error per key (NaN where no data)."""
    ok = np.isfinite(value) & np.isfinite(err) & (err > 0)
    w = np.where(ok, 1.0 / np.where(ok, err, 1.0) ** 2, 0.0)
    sw = np.bincount(key, weights=w, minlength=n_keys)
    swx = np.bincount(key, weights=np.where(ok, value, 0.0) * w, minlength=n_keys)
    with np.errstate(invalid="ignore", divide="ignore"):
        return swx / sw, 1.0 / np.sqrt(sw)


def _segment_reduce(
    ufunc: np.ufunc, key: np.ndarray, value: np.ndarray, n_keys: int, fill: float
) -> np.ndarray:
    """``ufunc.reduceat`` over rows sorted by ``key``; NaN for empty keys."""
    out = np.full(n_keys, np.nan)
    if len(key) == 0:
        return out
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    vals = np.where(np.isfinite(value), value, fill)
    red = ufunc.reduceat(vals, starts)
    red[red == fill] = np.nan
    out[key[starts]] = red
    return out


def summarize(object_ids: np.ndarray, sources: Columns, forced: Columns | None = None) -> Columns:
    """DiaObject summary columns for ``object_ids`` (in that order) from their history.

    ``sources`` needs diaObjectId, ra, dec, raErr, decErr, ra_dec_Cov, midpointMjdTai, band,
    psfFlux, psfFluxErr, scienceFlux, scienceFluxErr; ``forced`` needs diaObjectId, band,
    psfFlux, psfFluxErr. Rows of other objects are ignored.
    """
    object_ids = np.asarray(object_ids, dtype=np.int64)
    n = len(object_ids)
    lookup = np.argsort(object_ids)
    ids_sorted = object_ids[lookup]

    def obj_index(ids: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(ids_sorted, ids), 0, max(n - 1, 0))
        hit = ids_sorted[pos] == ids if n else np.zeros(len(ids), dtype=bool)
        return np.where(hit, lookup[pos] if n else -1, -1)

    oi = obj_index(np.asarray(sources["diaObjectId"], dtype=np.int64))
    sel = oi >= 0
    oi = oi[sel]
    s = {k: np.asarray(v)[sel] for k, v in sources.items()}
    out: Columns = {}

    # Position: weighted mean of small offsets from a reference source per object.
    ref = np.full(n, -1, dtype=np.int64)
    ref[oi[::-1]] = np.arange(len(oi))[::-1]  # first row of each object
    ra, dec = s["ra"].astype(np.float64), s["dec"].astype(np.float64)
    ra0 = ra[ref[oi]]
    dra = ((ra - ra0 + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
    ddec = dec - dec[ref[oi]]
    ra_err = np.nan_to_num(s["raErr"].astype(np.float64), nan=_POS_ERR_FLOOR_DEG)
    dec_err = np.nan_to_num(s["decErr"].astype(np.float64), nan=_POS_ERR_FLOOR_DEG)
    ra_err = np.maximum(ra_err, 1e-9)
    dec_err = np.maximum(dec_err, 1e-9)
    mdra, e_ra = _weighted(oi, n, dra, ra_err)
    mddec, e_dec = _weighted(oi, n, ddec, dec_err)
    w_ra, w_dec = 1.0 / ra_err**2, 1.0 / dec_err**2
    cov = np.nan_to_num(s["ra_dec_Cov"].astype(np.float64), nan=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sum_cov = np.bincount(oi, weights=w_ra * w_dec * cov, minlength=n)
        out["ra_dec_Cov"] = sum_cov / (
            np.bincount(oi, weights=w_ra, minlength=n) * np.bincount(oi, weights=w_dec, minlength=n)
        )
    have = ref >= 0
    dec_mean = np.where(have, dec[np.maximum(ref, 0)] + mddec, np.nan)
    ra_ref = ra[np.maximum(ref, 0)]
    with np.errstate(invalid="ignore"):
        out["ra"] = np.where(have, (ra_ref + mdra / np.cos(np.radians(dec_mean))) % 360.0, np.nan)
    out["dec"] = dec_mean
    out["raErr"], out["decErr"] = e_ra, e_dec

    t = s["midpointMjdTai"].astype(np.float64)
    out["nDiaSources"] = np.bincount(oi, minlength=n).astype(np.int32)
    out["firstDiaSourceMjdTai"] = _segment_reduce(np.minimum, *_sorted(oi, t), n, np.inf)
    out["lastDiaSourceMjdTai"] = _segment_reduce(np.maximum, *_sorted(oi, t), n, -np.inf)

    # Per band: key = object * 6 + band; rows sorted by (key, time) for min/max/slope.
    b = band_index(s["band"])
    good = b >= 0
    key = (oi * len(BANDS) + b)[good]
    nk = n * len(BANDS)
    flux = s["psfFlux"].astype(np.float64)[good]
    ferr = s["psfFluxErr"].astype(np.float64)[good]
    tt = t[good]
    order = np.lexsort((tt, key))
    key, flux, ferr, tt = key[order], flux[order], ferr[order], tt[order]
    finite = np.isfinite(flux)
    ndata = np.bincount(key[finite], minlength=nk)
    mean, mean_err = _weighted(key, nk, flux, ferr)
    plain_mean = np.bincount(key[finite], weights=flux[finite], minlength=nk) / np.maximum(ndata, 1)
    dev2 = np.where(finite, (flux - plain_mean[key]) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.sqrt(np.bincount(key, weights=dev2, minlength=nk) / (ndata - 1))
    sigma[ndata < 2] = np.nan
    fmin = _segment_reduce(np.minimum, key, flux, nk, np.inf)
    fmax = _segment_reduce(np.maximum, key, flux, nk, -np.inf)
    ferr_ok = np.isfinite(ferr)
    with np.errstate(invalid="ignore", divide="ignore"):
        err_mean = np.bincount(key[ferr_ok], weights=ferr[ferr_ok], minlength=nk) / np.bincount(
            key[ferr_ok], minlength=nk
        )
    # Max slope between consecutive finite observations of the same key (sorted by time).
    kf, xf, tf = key[finite], flux[finite], tt[finite]
    slope = np.full(len(kf), -np.inf)
    if len(kf) > 1:
        same = kf[1:] == kf[:-1]
        dt = tf[1:] - tf[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            sl = np.where(same & (dt > 0), (xf[1:] - xf[:-1]) / np.where(dt > 0, dt, 1.0), -np.inf)
        slope[1:] = sl
    max_slope = _segment_reduce(np.maximum, kf, slope, nk, -np.inf)

    sci_mean, sci_err = _weighted(
        key,
        nk,
        s["scienceFlux"].astype(np.float64)[good][order],
        s["scienceFluxErr"].astype(np.float64)[good][order],
    )
    if forced is not None and len(forced["diaObjectId"]):
        fo = obj_index(np.asarray(forced["diaObjectId"], dtype=np.int64))
        fb = band_index(np.asarray(forced["band"]))
        ok = (fo >= 0) & (fb >= 0)
        fkey = fo[ok] * len(BANDS) + fb[ok]
        fp_mean, fp_err = _weighted(
            fkey,
            nk,
            np.asarray(forced["psfFlux"], dtype=np.float64)[ok],
            np.asarray(forced["psfFluxErr"], dtype=np.float64)[ok],
        )
    else:
        fp_mean = fp_err = np.full(nk, np.nan)

    def per_band(arr: np.ndarray, k: int) -> np.ndarray:
        return arr.reshape(n, len(BANDS))[:, k]

    for k, band in enumerate(BANDS):
        out[f"{band}_psfFluxMean"] = per_band(mean, k)
        out[f"{band}_psfFluxMeanErr"] = per_band(mean_err, k)
        out[f"{band}_psfFluxSigma"] = per_band(sigma, k)
        out[f"{band}_psfFluxNdata"] = per_band(ndata, k).astype(np.int32)
        out[f"{band}_psfFluxMin"] = per_band(fmin, k)
        out[f"{band}_psfFluxMax"] = per_band(fmax, k)
        out[f"{band}_psfFluxMaxSlope"] = per_band(max_slope, k)
        out[f"{band}_psfFluxErrMean"] = per_band(err_mean, k)
        out[f"{band}_fpFluxMean"] = per_band(fp_mean, k)
        out[f"{band}_fpFluxMeanErr"] = per_band(fp_err, k)
        out[f"{band}_scienceFluxMean"] = per_band(sci_mean, k)
        out[f"{band}_scienceFluxMeanErr"] = per_band(sci_err, k)
    return out


def _sorted(key: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(key, kind="stable")
    return key[order], value[order]
