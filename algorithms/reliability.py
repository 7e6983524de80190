"""A cheap, feature-based real/bogus score for DIASources (no trained model).

Artefacts in difference images are mostly cosmic rays and hot pixels (narrower than the
PSF), bad subtractions around bright stars (dipoles, poor PSF χ², a flux change of a few
per cent of a bright template source), defects or saturation (flagged pixels) and sources
on the CCD edge. For the bright-star residuals the PSF-flux error is given a systematic
floor of ``SYSTEMATIC_FRACTION`` × template flux, and the significance lost to that floor
(counted up to S/N 5) is penalised: this also down-weights real variability of bright stars
below ~10 % amplitude. Each feature adds a penalty; reliability = exp(−Σ penalties) ∈ (0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

RELIABILITY_VERSION = "features-2"

#: PSF-matching residuals scale with the flux of the source underneath; a difference flux
#: below ~2 % of the template flux is within what PSF-model errors leave behind.
SYSTEMATIC_FRACTION = 0.02


def reliability_score(row: np.void, size_ratio: float) -> float:
    penalty = 0.0
    nd = max(int(row["psfNdata"]), 1)
    red_chi2 = float(row["psfChi2"]) / nd if np.isfinite(row["psfChi2"]) else 10.0
    penalty += 0.7 * max(0.0, red_chi2 - 1.5)
    if np.isfinite(size_ratio):
        penalty += 6.0 * max(0.0, 0.75 - size_ratio)
    else:
        penalty += 0.2
    if row["isDipole"]:
        penalty += 1.5
    for flag, weight in (
        ("pixelFlags_crCenter", 3.0),
        ("pixelFlags_saturatedCenter", 2.0),
        ("pixelFlags_interpolatedCenter", 1.5),
        ("pixelFlags_suspectCenter", 1.0),
        ("pixelFlags_nodataCenter", 2.0),
        ("pixelFlags_cr", 0.5),
        ("pixelFlags_bad", 0.5),
        ("pixelFlags_edge", 1.0),
    ):
        if row[flag]:
            penalty += weight
    penalty += 0.6 * _significance_loss(row)
    if row["centroid_flag"] or row["psfFlux_flag"]:
        penalty += 1.0
    return float(np.exp(-penalty))


def _significance_loss(row: np.void) -> float:
    """S/N (capped at 5) lost when the flux error gets the PSF-matching systematic floor."""
    f, fe = abs(float(row["psfFlux"])), float(row["psfFluxErr"])
    tf = float(row["templateFlux"])
    if not (np.isfinite(f) and np.isfinite(fe) and fe > 0 and np.isfinite(tf) and tf > 0):
        return 0.0
    snr_sys = f / float(np.hypot(fe, SYSTEMATIC_FRACTION * tf))
    return max(0.0, min(f / fe, 5.0) - snr_sys)


# --------------------------------------------------------------------------- trained model
#: The inputs of the trained model, in order: what :func:`features` computes per DIASource.
FEATURES: tuple[str, ...] = (
    "logSnr", "logDetSignificance", "logRedChi2", "sizeRatio", "extendedness", "isDipole",
    "dipoleFitAttempted", "isNegative", "templateFraction", "templateSnr", "scienceSnr",
    "apOverPsf", "diffOverScience", "trailLength", "logDipoleRedChi2", "dipoleAsymmetry",
    "bboxSize", "pixelFlags_bad", "pixelFlags_cr", "pixelFlags_crCenter", "pixelFlags_edge",
    "pixelFlags_nodataCenter", "pixelFlags_interpolated", "pixelFlags_interpolatedCenter",
    "pixelFlags_saturated", "pixelFlags_saturatedCenter", "pixelFlags_suspect",
    "pixelFlags_suspectCenter", "centroid_flag", "psfFlux_flag", "shape_flag",
    "apFlux_flag_apertureTruncated",
    # what the difference looks like at the nearest bright star (``algorithms.star_residual``)
    "starOffset", "logStarFluxFraction", "starModelSnr", "starFluxRatio", "starPsfCorrelation",
    "stampPsfCorrelation", "stampAsymmetry",
)  # fmt: skip
#: A feature that cannot be computed (a failed fit, no moments) takes this value; trees split
#: it off like any other value, so missing is informative rather than imputed.
MISSING = -9.0


def _col(cols: Mapping[str, np.ndarray] | np.ndarray, name: str, n: int) -> np.ndarray:
    names = cols.dtype.names if isinstance(cols, np.ndarray) else cols.keys()
    if name not in (names or ()):
        return np.full(n, np.nan)
    return np.asarray(cols[name], dtype=np.float64).reshape(n)


def _finite(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.where(np.isfinite(a), np.clip(a, lo, hi), MISSING)


def features(cols: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """The (n, len(FEATURES)) float32 feature matrix of DIASources (Rubin column names).

    ``cols`` is a structured array or a mapping of columns; a column that is absent counts
    as missing (flags: not set).
    """
    n = len(cols) if isinstance(cols, np.ndarray) else len(np.asarray(cols["psfFlux"]))

    def c(name: str) -> np.ndarray:
        return _col(cols, name, n)

    with np.errstate(divide="ignore", invalid="ignore"):
        flux, err = c("psfFlux"), c("psfFluxErr")
        tf, tfe = c("templateFlux"), c("templateFluxErr")
        sf, sfe = c("scienceFlux"), c("scienceFluxErr")
        nd = np.maximum(c("psfNdata"), 1.0)
        dnd = np.maximum(c("dipoleNdata"), 1.0)
        size = (c("ixx") + c("iyy")) / (c("ixxPSF") + c("iyyPSF"))
        out = {
            "logSnr": np.log10(np.abs(flux / err)),
            "logDetSignificance": np.log10(np.abs(c("snr"))),
            "logRedChi2": np.log10(c("psfChi2") / nd),
            "sizeRatio": size,
            "extendedness": c("extendedness"),
            "isDipole": c("isDipole"),
            "dipoleFitAttempted": c("dipoleFitAttempted"),
            "isNegative": c("isNegative"),
            "templateFraction": np.arcsinh(flux / (np.abs(tf) + np.abs(tfe))),
            "templateSnr": np.arcsinh(tf / tfe),
            "scienceSnr": np.arcsinh(sf / sfe),
            "apOverPsf": c("apFlux") / flux,
            "diffOverScience": flux / np.abs(sf),
            "trailLength": c("trailLength"),
            "logDipoleRedChi2": np.log10(c("dipoleChi2") / dnd),
            "dipoleAsymmetry": np.abs(c("dipoleFluxDiff")) / np.abs(c("dipoleMeanFlux")),
            "bboxSize": c("bboxSize"),
            "starOffset": c("starOffset"),
            "logStarFluxFraction": np.log10(np.clip(c("starFluxFraction"), 1e-6, None)),
            "starModelSnr": np.arcsinh(np.clip(c("starModelSnr"), -1e3, 1e3)),
            "starFluxRatio": np.clip(c("starFluxRatio"), -5.0, 5.0),
            "starPsfCorrelation": c("starPsfCorrelation"),
            "stampPsfCorrelation": c("stampPsfCorrelation"),
            "stampAsymmetry": c("stampAsymmetry"),
        }
    m = np.empty((n, len(FEATURES)), dtype=np.float32)
    for k, name in enumerate(FEATURES):
        if name in out:
            m[:, k] = _finite(out[name], -1.0e4, 1.0e4)
        else:
            m[:, k] = np.nan_to_num(c(name), nan=0.0) != 0
    return m


@dataclass(frozen=True)
class ReliabilityModel:
    """Gradient-boosted regression trees on :data:`FEATURES` (or, for a model trained before
    some were added, on the subset it names), evaluated with numpy.

    Trees are flat arrays (node ``k`` splits on ``feature[k]`` at ``threshold[k]``: ``x <=
    threshold`` goes to ``left[k]``; a leaf has ``feature == -1`` and adds ``value[k]``).
    The score is the logistic of ``base + rate * Σ leaf values`` (scikit-learn's
    ``GradientBoostingClassifier`` with log-loss, which trained it).
    """

    version: str
    features: tuple[str, ...]
    base: float
    rate: float
    feature: np.ndarray  # (trees, nodes) int32
    threshold: np.ndarray  # (trees, nodes) float64
    left: np.ndarray  # (trees, nodes) int32
    right: np.ndarray  # (trees, nodes) int32
    value: np.ndarray  # (trees, nodes) float64
    depth: int
    metadata: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReliabilityModel:
        """Build and check a model from its JSON form; raises ``ValueError`` if malformed."""
        try:
            if d.get("kind") != "gradient_boosted_trees":
                raise ValueError(f"unknown model kind {d.get('kind')!r}")
            names = tuple(str(f) for f in d["features"])
            if not names or not set(names) <= set(FEATURES):
                raise ValueError(
                    "the model was trained on other features than this code computes: "
                    f"{sorted(set(names) - set(FEATURES)) or 'none'}"
                )
            trees = d["trees"]
            if not trees:
                raise ValueError("a model without trees")
            width = max(len(t["feature"]) for t in trees)
            shape = (len(trees), width)
            feature = np.full(shape, -1, np.int32)
            threshold = np.zeros(shape, np.float64)
            left = np.zeros(shape, np.int32)
            right = np.zeros(shape, np.int32)
            value = np.zeros(shape, np.float64)
            for i, t in enumerate(trees):
                k = len(t["feature"])
                feature[i, :k] = t["feature"]
                threshold[i, :k] = t["threshold"]
                left[i, :k] = t["left"]
                right[i, :k] = t["right"]
                value[i, :k] = t["value"]
            model = cls(
                version=str(d["version"]),
                features=names,
                base=float(d["base"]),
                rate=float(d["rate"]),
                feature=feature,
                threshold=threshold,
                left=left,
                right=right,
                value=value,
                depth=int(d["depth"]),
                metadata=dict(d.get("metadata", {})),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed reliability model: {e!r}") from e
        model._check()
        return model

    def _check(self) -> None:
        split = self.feature >= 0
        if (self.feature >= len(self.features)).any():
            raise ValueError("a split on a feature the model does not have")
        for a in (self.left, self.right):
            if (split & ((a < 0) | (a >= self.feature.shape[1]))).any():
                raise ValueError("a split whose child is outside its tree")
        if not (np.isfinite(self.value).all() and np.isfinite(self.base) and self.depth >= 1):
            raise ValueError("non-finite leaf values or base score")

    def to_dict(self) -> dict[str, Any]:
        trees = []
        for i in range(self.feature.shape[0]):
            trees.append(
                {
                    "feature": self.feature[i].tolist(),
                    "threshold": [float(v) for v in self.threshold[i]],
                    "left": self.left[i].tolist(),
                    "right": self.right[i].tolist(),
                    "value": [float(v) for v in self.value[i]],
                }
            )
        return {
            "kind": "gradient_boosted_trees",
            "version": self.version,
            "features": list(self.features),
            "base": self.base,
            "rate": self.rate,
            "depth": self.depth,
            "trees": trees,
            "metadata": self.metadata,
        }

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Log-odds of being real for a feature matrix of the model's ``features`` (in order;
        :func:`features` when the model was trained on all of them)."""
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        n, (t, width) = x.shape[0], self.feature.shape
        # Flat ``take`` on raveled tables: 2-D fancy indexing cost ~5x more for a CCD's sources.
        feature, threshold = self.feature.ravel(), self.threshold.ravel()
        left, right = self.left.ravel(), self.right.ravel()
        flat_x = np.ascontiguousarray(x).ravel()
        tree = (np.arange(t, dtype=np.int64) * width)[:, None]
        sample = (np.arange(n, dtype=np.int64) * x.shape[1])[None, :]
        node = np.zeros((t, n), np.int64)
        for _ in range(self.depth):
            at = tree + node
            f = feature.take(at)
            leaf = f < 0
            xv = flat_x.take(sample + np.where(leaf, 0, f))
            nxt = np.where(xv <= threshold.take(at), left.take(at), right.take(at))
            node = np.where(leaf, node, nxt)
        return self.base + self.rate * self.value.ravel().take(tree + node).sum(axis=0)

    def score(self, cols: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """Reliability in [0, 1] of each DIASource (probability of being real)."""
        if (len(cols) if isinstance(cols, np.ndarray) else len(np.asarray(cols["psfFlux"]))) == 0:
            return np.zeros(0, np.float32)
        x = features(cols)
        if self.features != FEATURES:
            x = x[:, [FEATURES.index(f) for f in self.features]]
        z = self.decision(x)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))).astype(np.float32)
