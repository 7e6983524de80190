"""The trained reliability model: loading, scoring, the alert threshold and alert selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from algorithms.association_run import alert_selection, associate
from algorithms.reliability import FEATURES, ReliabilityModel, features
from base.apdb import outbox
from base.apdb.outbox import AlertOutbox
from base.apdb.simulate import dia_sources
from base.prompt.association import Association
from base.reliability import DEFAULT_MODEL, alert_threshold, load_reliability_model
from state.errors import ConfigurationError
from tests.test_prompt_components import ccd_wire


def tiny_model(**changes: Any) -> dict[str, Any]:
    """Two trees on logSnr (feature 0) and isDipole (feature 5), worked out by hand below."""
    d = {
        "kind": "gradient_boosted_trees",
        "version": "tiny-1",
        "features": list(FEATURES),
        "base": -1.0,
        "rate": 0.5,
        "depth": 2,
        "trees": [
            {
                "feature": [0, -1, -1],
                "threshold": [1.0, 0, 0],
                "left": [1, 0, 0],
                "right": [2, 0, 0],
                "value": [0, -2.0, 4.0],
            },
            {
                "feature": [5, -1, -1],
                "threshold": [0.5, 0, 0],
                "left": [1, 0, 0],
                "right": [2, 0, 0],
                "value": [0, 1.0, -6.0],
            },
        ],
        "metadata": {"recommendedThreshold": 0.4},
    }
    d.update(changes)
    return d


def sources(n: int = 6, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return dia_sources(rng, np.full(n, 150.0), np.full(n, 2.0), 1, 1, 60800.0)


def test_tree_walk_matches_the_hand_computation() -> None:
    model = ReliabilityModel.from_dict(tiny_model())
    cols = sources(3)
    cols["psfFlux"] = np.array([50.0, 500.0, 500.0])
    cols["psfFluxErr"] = np.array([10.0, 10.0, 10.0])  # logSnr 0.7, 1.7, 1.7
    cols["isDipole"] = np.array([False, False, True])
    z = np.array([-1 + 0.5 * (-2 + 1), -1 + 0.5 * (4 + 1), -1 + 0.5 * (4 - 6)])
    np.testing.assert_allclose(model.decision(features(cols)), z)
    np.testing.assert_allclose(model.score(cols), 1 / (1 + np.exp(-z)), rtol=1e-6)
    assert model.score({k: v[:0] for k, v in cols.items()}).shape == (0,)
    again = ReliabilityModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(again.score(cols), model.score(cols))


def test_a_model_on_a_subset_of_the_features_scores_by_name() -> None:
    """A model trained before features were added keeps scoring on the ones it names."""
    full = ReliabilityModel.from_dict(tiny_model())
    t0, t1 = tiny_model()["trees"]
    subset = ReliabilityModel.from_dict(
        tiny_model(
            features=["isDipole", "logSnr"],
            trees=[dict(t0, feature=[1, -1, -1]), dict(t1, feature=[0, -1, -1])],
        )
    )
    cols = sources(3)
    cols["psfFlux"] = np.array([50.0, 500.0, 500.0])
    cols["psfFluxErr"] = np.array([10.0, 10.0, 10.0])
    cols["isDipole"] = np.array([False, False, True])
    np.testing.assert_array_equal(subset.score(cols), full.score(cols))


def test_features_of_missing_columns_and_failed_fits() -> None:
    cols = sources(2)
    cols["psfChi2"] = np.array([np.nan, 4.0], np.float32)
    del cols["ixx"]
    m = features(cols)
    assert m.shape == (2, len(FEATURES)) and np.isfinite(m).all()
    k = FEATURES.index("logRedChi2")
    assert m[0, k] == -9.0 and m[1, k] != -9.0
    assert (m[:, FEATURES.index("sizeRatio")] == -9.0).all()
    assert (m[:, FEATURES.index("starModelSnr")] == -9.0).all()  # no star columns: missing
    cols.update(starFluxFraction=np.array([0.04, np.nan]), starModelSnr=np.array([-5e3, 8.0]))
    m = features(cols)
    assert m[0, FEATURES.index("logStarFluxFraction")] == pytest.approx(np.log10(0.04))
    assert m[1, FEATURES.index("logStarFluxFraction")] == -9.0
    z = m[:, FEATURES.index("starModelSnr")]
    assert z[0] == pytest.approx(-np.arcsinh(1e3)) and z[0] > -9.0 and z[1] > 0


def test_the_shipped_model_loads_and_scores() -> None:
    model = load_reliability_model()
    assert model.version == "gbt-5" and list(model.features) == list(FEATURES)
    assert 0.0 <= alert_threshold(model, None) < 1.0
    assert model.metadata["nTrainReal"] > 0 and model.metadata["heldOut"]
    cols = sources(40)
    score = model.score(cols)
    assert score.dtype == np.float32 and score.shape == (40,)
    assert ((score >= 0) & (score <= 1)).all()
    np.testing.assert_array_equal(score, model.score(cols))
    flagged = dict(cols, pixelFlags_crCenter=np.ones(40, bool), psfFlux=cols["psfFlux"] * 0.2)
    assert model.score(flagged).mean() < score.mean()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "cannot read"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps(tiny_model(features=["logSnr", "noSuchFeature"])), "other features"),
        (json.dumps(tiny_model(features=[])), "other features"),
        (json.dumps(tiny_model(kind="forest")), "unknown model kind"),
        (json.dumps(tiny_model(trees=[])), "without trees"),
        (json.dumps({k: v for k, v in tiny_model().items() if k != "base"}), "malformed"),
        (
            json.dumps(tiny_model(trees=[dict(tiny_model()["trees"][0], left=[7, 0, 0])])),
            "outside its tree",
        ),
        (
            json.dumps(tiny_model(trees=[dict(tiny_model()["trees"][0], feature=[99, -1, -1])])),
            "feature the model does not have",
        ),
    ],
)
def test_a_bad_model_file_is_a_configuration_error(
    tmp_path: Path, text: str | None, match: str
) -> None:
    path = tmp_path / "model.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigurationError, match=match):
        load_reliability_model(path)


def test_alert_threshold_configured_or_recommended() -> None:
    model = ReliabilityModel.from_dict(tiny_model())
    assert alert_threshold(model, None) == 0.4
    assert alert_threshold(model, 0.9) == 0.9
    bare = ReliabilityModel.from_dict(tiny_model(metadata={}))
    with pytest.raises(ConfigurationError, match="no alert threshold"):
        alert_threshold(bare, None)
    assert alert_threshold(bare, 0.0) == 0.0


def test_alert_selection_needs_an_object_and_the_threshold() -> None:
    cols = {
        "diaSourceId": np.arange(5),
        "diaObjectId": np.array([7, 0, 0, 9, 9]),
        "ssObjectId": np.array([0, 3, 0, 0, 0]),
        "reliability": np.array([0.9, 0.9, 0.9, 0.2, np.nan]),
    }
    assert alert_selection(cols, None).tolist() == [True, True, False, True, True]
    assert alert_selection(cols, 0.5).tolist() == [True, True, False, False, False]


def test_reliability_decides_which_unmatched_sources_found_objects() -> None:
    cols = sources(6)
    cols["reliability"] = np.array([0.9, 0.1, 0.6, 0.59, 0.0, 1.0], np.float32)
    cols["pixelFlags_saturatedCenter"] = np.ones(6, bool)  # fails the flag cuts
    empty = {k: np.zeros(0) for k in ("ra", "dec", "raErr", "decErr")}
    empty["diaObjectId"] = np.zeros(0, np.int64)
    res = associate(cols, empty, {}, None, 60800.0, min_reliability=0.6)
    assert (res.sources["diaObjectId"] != 0).tolist() == [True, False, True, False, False, True]
    assert res.n_new == 3 and res.n_unassociated == 3
    old = associate(cols, empty, {}, None, 60800.0)
    assert old.n_new == 0, "without a model the flag cuts decide"


# --------------------------------------- the Association component (plain class, PostgreSQL)
async def _outbox_handoff(pg_dsn: str, schema: str) -> dict[str, Any]:
    """The one hand-off Association wrote to the APDB's alert outbox (no publisher drains it)."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        rows = await (await AlertOutbox.open(pool, schema)).pending()
    finally:
        await pool.close()
    assert len(rows) == 1
    return outbox.decode(rows[0].meta, rows[0].payload)


async def _associate(tmp_path: Path, pg_dsn: str, schema: str, **settings: Any) -> Any:
    comp = Association(
        "Association",
        sink=lambda _e: None,
        settings={"dsn": pg_dsn, "apdb_schema": schema, **settings},
        data_dir=tmp_path,
    )
    await comp.start()
    try:
        await comp.do_start()
        await comp.do_enable()
        reply = await comp.rpc_associate(ccd_wire(n=30))
        handoff = await _outbox_handoff(pg_dsn, schema)
        await comp.do_disable()
        await comp.do_standby()
    finally:
        await comp.close()
    return reply, handoff


async def test_association_honours_the_threshold_and_alerts_reference_objects(
    tmp_path: Path, pg_dsn: str
) -> None:
    strict_reply, strict = await _associate(
        tmp_path / "a", pg_dsn, "apdb_rb_strict", alert_reliability_threshold=1.0
    )
    assert strict_reply["nDiaSources"] == 30, "every DIASource is stored"
    assert strict_reply["nAlerted"] == 0 and len(strict["sources"]["diaSourceId"]) == 0
    scores = load_reliability_model().score(ccd_wire(n=30)["sources"])
    threshold = float(np.median(scores))  # the shipped model's: some pass, some do not
    reply, handoff = await _associate(
        tmp_path / "b", pg_dsn, "apdb_rb_open", alert_reliability_threshold=threshold
    )
    src = handoff["sources"]
    expected = scores >= threshold
    assert 0 < reply["nAlerted"] == len(src["diaSourceId"]) == int(expected.sum()) < 30
    assert ((src["diaObjectId"] != 0) | (src["ssObjectId"] != 0)).all()
    assert (src["reliability"] >= threshold).all()


async def test_association_start_fails_on_a_bad_model(tmp_path: Path, pg_dsn: str) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    comp = Association(
        "Association",
        sink=lambda _e: None,
        settings={"dsn": pg_dsn, "apdb_schema": "apdb_rb_bad", "reliability_model": str(junk)},
        data_dir=tmp_path,
    )
    await comp.start()
    try:
        with pytest.raises(ConfigurationError, match="reliability model"):
            await comp.do_start()
    finally:
        await comp.close()


def test_default_model_path_is_in_the_repository() -> None:
    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size < 512 * 1024


def test_the_shipped_model_separates_real_from_bogus_on_a_test_night(mini_night: Path) -> None:
    """On a night of a seed the training never saw (the tests' mini night, seed 1), processed
    by the product's chain: the alerted DIASources are much purer than all of them, and most
    true sources the chain found are kept."""
    from scripts.night_truth import label_night

    night = label_night("mini", 1, mini_night, workers=1)
    real = night.dia["real"]
    model = load_reliability_model()
    score = model.score(night.dia)
    assert real.sum() >= 5 and (~real).sum() >= 1
    kept = score >= alert_threshold(model, None)
    assert real[kept].mean() >= max(0.8, real.mean()), (real[kept].mean(), real.mean())
    assert kept[real].mean() >= 0.75
    assert score[~real].mean() < score[real].mean() - 0.3
