"""Association on constructed cases, summaries against direct computation, forced photometry."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.association import (
    angular_separation_arcsec,
    candidate_pairs,
    healpix_pixels,
    match_positions,
)
from algorithms.association_run import associate, ecliptic, galactic
from algorithms.association_summary import summarize
from algorithms.forced_photometry import forced_psf_photometry
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky

AS = 1.0 / 3600.0
RA0, DEC0 = 45.0, -20.0
MJD = 60801.3


def _offset(dx_arcsec: float, dy_arcsec: float) -> tuple[float, float]:
    return RA0 + dx_arcsec * AS / np.cos(np.radians(DEC0)), DEC0 + dy_arcsec * AS


def _cat(points: list[tuple[float, float]], visit: int, rng: np.random.Generator, **kw) -> dict:
    ra = np.array([_offset(*p)[0] for p in points])
    dec = np.array([_offset(*p)[1] for p in points])
    kw.setdefault("flux", np.full(len(points), 5000.0))
    return dia_sources(rng, ra, dec, visit, 1, MJD + visit, **kw)


def _objects(points: list[tuple[float, float]], rng: np.random.Generator) -> tuple[dict, dict]:
    hist = _cat(points, 1, rng)
    hist["diaObjectId"] = hist["diaSourceId"].copy()
    return dia_objects_from_sources(hist, MJD), hist


def test_candidate_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(7)
    ora, odec = random_sky(rng, 20000, 300.0, 60.0, 0.02)  # dense: many pairs inside 1"
    sra = ora[:2000] + rng.normal(0, 0.6 * AS, 2000) / np.cos(np.radians(odec[:2000]))
    sdec = odec[:2000] + rng.normal(0, 0.6 * AS, 2000)
    i, j, _ = candidate_pairs(sra, sdec, ora, odec, 1.0)
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    d = angular_separation_arcsec(sra[:, None], sdec[:, None], ora[None, :], odec[None, :])
    bi, bj = np.nonzero(d <= 1.0)
    assert got == set(zip(bi.tolist(), bj.tolist(), strict=True))
    # Pre-sorted APDB pixel ids give the same answer without the sort.
    order = np.argsort(healpix_pixels(ora, odec, 16))
    i2, j2, _ = candidate_pairs(
        sra, sdec, ora[order], odec[order], 1.0, healpix_pixels(ora[order], odec[order], 16)
    )
    assert set(zip(i2.tolist(), order[j2].tolist(), strict=True)) == got


def test_one_to_one_beats_greedy() -> None:
    # Objects A (0") and B (1"); s1 at 0.6" is nearer B, s2 at 1.9" can only reach B.
    # Nearest-neighbour would give s1->B and leave s2 alone; the assignment gives s1->A, s2->B.
    rng = np.random.default_rng(1)
    obj, _ = _objects([(0, 0), (1.0, 0)], rng)
    src = _cat([(0.6, 0), (1.9, 0)], 2, rng)
    err = np.full(2, 0.05)
    m = match_positions(src["ra"], src["dec"], err, obj["ra"], obj["dec"], err, 1.0)
    assert m.index.tolist() == [0, 1]


def test_crossing_tracks() -> None:
    # Two objects whose next detections are each 0.4" off along tracks that cross: every source
    # is within 1" of both objects; the likelihood assignment picks the consistent pairing.
    rng = np.random.default_rng(2)
    obj, hist = _objects([(0, 0), (0.8, 0)], rng)
    src = _cat([(0.75, 0.1), (0.05, -0.1)], 2, rng)
    res = associate(src, obj, hist, None, MJD + 2)
    ids = obj["diaObjectId"]
    assert res.sources["diaObjectId"].tolist() == [ids[1], ids[0]]
    assert res.n_matched == 2 and res.n_new == 0


def test_two_sources_near_one_object() -> None:
    rng = np.random.default_rng(3)
    obj, hist = _objects([(0, 0)], rng)
    src = _cat([(0.7, 0), (0.2, 0.1)], 2, rng)
    res = associate(src, obj, hist, None, MJD + 2)
    oid = obj["diaObjectId"][0]
    # The nearer source takes the object; the other founds a new DIAObject with its own id.
    assert res.sources["diaObjectId"][1] == oid
    assert res.sources["diaObjectId"][0] == src["diaSourceId"][0]
    assert res.n_matched == 1 and res.n_new == 1
    k = np.flatnonzero(res.objects["diaObjectId"] == oid)[0]
    assert res.objects["nDiaSources"][k] == 2
    assert res.objects["validityStartMjdTai"][k] == MJD + 2


def test_moving_object_takes_precedence() -> None:
    rng = np.random.default_rng(4)
    obj, hist = _objects([(0, 0)], rng)
    # Source 0 sits 0.3" from a predicted asteroid and 0.5" from a DIAObject: it is the asteroid.
    src = _cat([(0.5, 0), (30, 30)], 2, rng)
    pra, pdec = _offset(0.5, 0.3)
    ss = {
        "ssObjectId": np.array([987654321], dtype=np.int64),
        "ra": np.array([pra]),
        "dec": np.array([pdec]),
        "designation": np.array(["2025 AB12"], dtype=object),
        "ephRateRa": np.array([0.1]),
        "ephRateDec": np.array([0.0]),
    }
    res = associate(src, obj, hist, None, MJD + 2, ss_predictions=ss)
    assert res.sources["ssObjectId"].tolist() == [987654321, 0]
    assert res.sources["diaObjectId"][0] == 0
    assert res.n_moving == 1
    assert res.ss_sources["diaSourceId"].tolist() == [src["diaSourceId"][0]]
    assert res.ss_sources["ephOffset"][0] == pytest.approx(0.3, abs=1e-3)
    assert res.ss_sources["ephOffsetCrossTrack"][0] == pytest.approx(-0.3, abs=1e-3)
    # The DIAObject is untouched; source 1 is far from everything and founds a new object.
    assert res.sources["diaObjectId"][1] == src["diaSourceId"][1]
    assert obj["diaObjectId"][0] not in res.objects["diaObjectId"]


def test_new_object_needs_quality() -> None:
    rng = np.random.default_rng(5)
    obj, hist = _objects([(0, 0)], rng)
    src = _cat([(50, 0), (80, 0), (110, 0)], 2, rng, flux=np.array([5000.0, 600.0, 5000.0]))
    src["pixelFlags_saturatedCenter"][2] = True
    res = associate(src, obj, hist, None, MJD + 2)
    assert res.sources["diaObjectId"].tolist() == [src["diaSourceId"][0], 0, 0]
    assert res.n_new == 1 and res.n_unassociated == 2


def test_galactic_and_ecliptic_match_astropy() -> None:
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra, dec = np.array([10.0, 266.4, 150.0]), np.array([41.0, -28.9, 2.2])
    c = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    gl, gb = galactic(ra, dec)
    np.testing.assert_allclose(gl, c.galactic.l.deg, atol=1e-5)  # ICRS-FK5 frame bias 0.02"
    np.testing.assert_allclose(gb, c.galactic.b.deg, atol=1e-5)
    lam, beta = ecliptic(ra, dec)
    ecl = c.transform_to("barycentricmeanecliptic")
    np.testing.assert_allclose(lam, ecl.lon.deg, atol=2e-3)  # frame bias/precession < 10"
    np.testing.assert_allclose(beta, ecl.lat.deg, atol=2e-3)


def test_summary_against_direct_computation() -> None:
    rng = np.random.default_rng(6)
    n = 7
    ra = RA0 + rng.normal(0, 0.1 * AS, n)
    dec = DEC0 + rng.normal(0, 0.1 * AS, n)
    flux = np.array([1000.0, 1500.0, 800.0, 1200.0, 3000.0, 2500.0, 100.0])
    src = dia_sources(rng, ra, dec, 5, 1, MJD, flux=flux)
    src["midpointMjdTai"] = MJD + np.array([0.0, 1.0, 2.0, 4.0, 0.5, 1.5, 3.0])
    src["band"] = np.array(["g", "g", "g", "g", "r", "r", "r"], dtype=object)
    src["diaObjectId"] = np.full(n, 42, dtype=np.int64)
    out = summarize(np.array([42]), src)
    g = slice(0, 4)
    w = 1.0 / src["psfFluxErr"][g].astype(float) ** 2
    assert out["g_psfFluxMean"][0] == pytest.approx(np.sum(w * flux[g]) / w.sum(), rel=1e-6)
    assert out["g_psfFluxMeanErr"][0] == pytest.approx(1 / np.sqrt(w.sum()), rel=1e-6)
    assert out["g_psfFluxSigma"][0] == pytest.approx(np.std(flux[g], ddof=1), rel=1e-6)
    assert out["g_psfFluxNdata"][0] == 4 and out["r_psfFluxNdata"][0] == 3
    assert out["g_psfFluxMin"][0] == 800.0 and out["g_psfFluxMax"][0] == 1500.0
    assert out["g_psfFluxMaxSlope"][0] == pytest.approx(500.0)  # (1500-1000)/1 d
    assert out["r_psfFluxMaxSlope"][0] == pytest.approx(-500.0)  # (2500-3000)/1 d is the largest
    assert np.isnan(out["u_psfFluxMean"][0]) and out["u_psfFluxNdata"][0] == 0
    assert out["nDiaSources"][0] == 7
    assert out["firstDiaSourceMjdTai"][0] == MJD and out["lastDiaSourceMjdTai"][0] == MJD + 4
    assert out["ra"][0] == pytest.approx(ra.mean(), abs=1e-9)  # equal errors: plain mean
    assert out["dec"][0] == pytest.approx(dec.mean(), abs=1e-9)
    assert out["decErr"][0] == pytest.approx(src["decErr"][0] / np.sqrt(n), rel=1e-5)


def _gaussian_psf(sigma: float, half: int = 7) -> np.ndarray:
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    p = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return p / p.sum()


def test_forced_photometry_recovers_flux() -> None:
    rng = np.random.default_rng(8)
    shape, sigma_pix = (200, 220), 2.0
    var = np.full(shape, 25.0)
    xs = np.array([50.3, 120.7, 180.5, 100.0, 1.0])
    ys = np.array([40.6, 150.2, 60.9, 100.0, 100.0])
    fluxes = np.array([5000.0, -3000.0, 800.0, 0.0, 4000.0])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        img += (
            f
            * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_pix**2))
            / (2 * np.pi * sigma_pix**2)
        )
    img += rng.normal(0, 5.0, shape)
    res = forced_psf_photometry(img, var, _gaussian_psf(sigma_pix), xs, ys)
    expected_err = 5.0 * np.sqrt(4 * np.pi) * sigma_pix  # 1/sqrt(sum P^2/V) for a Gaussian
    assert res.flux_err[0] == pytest.approx(expected_err, rel=0.1)
    assert np.all(np.abs(res.flux[:4] - fluxes[:4]) < 4 * res.flux_err[:4])
    assert res.flag_edge.tolist() == [False, False, False, False, True]
    mask = np.zeros(shape, dtype=np.int32)
    mask[90:111, 90:111] = 1
    masked = forced_psf_photometry(img, var, _gaussian_psf(sigma_pix), xs, ys, mask=mask)
    assert masked.flag_no_good_pixels.tolist() == [False, False, False, True, False]
    with pytest.raises(ValueError, match="odd-sized"):
        forced_psf_photometry(img, var, np.ones((4, 4)), xs, ys)
