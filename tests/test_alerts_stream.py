"""The filter language (safe, clear errors) and the subscriber fan-out (bounded, never waits)."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import numpy as np
import pytest

from base.alerts import (
    PREDEFINED,
    AlertFanout,
    FilterError,
    alert_table,
    build_alerts,
    compile_filter,
    decode,
    predefined,
    serialize,
)
from base.apdb import IdPacker
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from state.errors import InvalidInputError


@pytest.fixture(scope="module")
def visit() -> tuple[dict, dict, dict, list[bytes]]:
    rng = np.random.default_rng(21)
    ra, dec = random_sky(rng, 400, 30.0, 5.0, 0.1)
    src = dia_sources(rng, ra, dec, 7, 2, 60900.0, band="r", packer=IdPacker(2))
    src["band"][::3] = "g"
    src["diaObjectId"] = src["diaSourceId"].copy()
    src["diaObjectId"][::5] = 0  # unassociated sources: no diaObject in their alert
    src["ssObjectId"][7] = 42
    objects = dia_objects_from_sources(
        {k: v[src["diaObjectId"] != 0] for k, v in src.items()}, 60900.0
    )
    ss = {
        "diaSourceId": src["diaSourceId"][7:8],
        "ssObjectId": np.array([42]),
        "eclLambda": [1.0],
        "eclBeta": [2.0],
        "galLon": [3.0],
        "galLat": [4.0],
    }
    ss = {k: np.asarray(v) for k, v in ss.items()}
    packets = serialize(build_alerts(src, objects, ss_sources=ss))
    return src, objects, ss, packets


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (
            "diaSource.psfFlx > 3",
            re.escape(
                "column 1: unknown field 'diaSource.psfFlx' (did you mean 'diaSource.psfFlux'?)"
            ),
        ),
        ("__import__('os').system('true')", "only plain calls|unknown function"),
        ("diaSource.__class__ == 1", "unknown field 'diaSource.__class__'"),
        ("snr >", "syntax error"),
        ("diaSource.band > 'g'", "only == and != apply to str"),
        ("diaSource.band == 3", "cannot compare a str with a num"),
        ("diaSource.snr + 3", "expected a bool expression"),
        ("(lambda: 1)()", "only plain calls"),
        ("[x for x in (1, 2)]", "ListComp is not part of the filter language"),
        ("diaSource.snr ** 2 > 4", "only \\+ - \\* / are allowed"),
        ("sqrt(1, 2) > 0", "sqrt\\(\\) takes 1 argument"),
        ("", "empty"),
        ("a" * 3000, "longer than"),
    ],
)
def test_invalid_filters_rejected_clearly(expr: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        compile_filter(expr)


def test_vector_mask_equals_per_alert_evaluation(visit: tuple) -> None:
    src, objects, ss, packets = visit
    table = alert_table(src, objects, ss)
    decoded = [decode(p) for p in packets]
    exprs = [
        *PREDEFINED.values(),
        "snr > 25 or (diaSource.band == 'g' and diaObject.nDiaSources >= 1)",
        "isnull(diaObject.diaObjectId)",
        "diaSource.band in ('g', 'z') and not diaSource.isNegative",
        "abs(diaSource.psfFlux) / diaSource.psfFluxErr > 10 > 3",
        "mag(diaSource.scienceFlux) < 20.5",
    ]
    for expr in exprs:
        f = compile_filter(expr)
        mask = f.mask(table, len(packets))
        per_alert = np.array([f.matches(a) for a in decoded])
        np.testing.assert_array_equal(mask, per_alert, err_msg=expr)
    assert compile_filter("isnull(diaObject.diaObjectId)").mask(table, 400).sum() == 80
    assert predefined("moving_objects").mask(table, 400).tolist().count(True) == 1
    bright = compile_filter("diaSource.snr > 20").mask(table, 400)
    np.testing.assert_array_equal(bright, src["snr"] > 20)


def test_fanout_limits_and_slow_subscriber(visit: tuple) -> None:
    src, objects, ss, packets = visit
    table = alert_table(src, objects, ss)
    fan = AlertFanout(queue_size=30, per_visit_limit=20, max_drops=15)
    fast = [fan.subscribe(f"user{i}", compile_filter(f"diaSource.snr > {i}")) for i in range(98)]
    slow = fan.subscribe("slow", compile_filter("diaSource.snr > 0"))
    broker = fan.subscribe("broker", full_stream=True)
    t0 = time.perf_counter()
    for v in range(3):
        stats = fan.publish_visit(v, src["diaSourceId"], packets, table)
        # Fast subscribers drain their queue between visits; the slow one never reads.
        for sub in fast:
            got = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
            assert len(got) == min(20, int((src["snr"] > int(sub.name[4:])).sum()))
            assert [m.seq for m in got] == list(range(sub.seq - len(got) + 1, sub.seq + 1))
            assert all(
                src["snr"][np.searchsorted(src["diaSourceId"], m.dia_source_id)] > int(sub.name[4:])
                for m in got
            )
        broker_msgs = [broker.queue.get_nowait() for _ in range(broker.queue.qsize())]
        assert len(broker_msgs) == 400 and stats.n_alerts == 400
    assert time.perf_counter() - t0 < 5.0
    # The slow subscriber filled its 30 slots, then lost the oldest and was marked lagging.
    # visit 0: 20 queued; visit 1: 10 fit, 10 oldest out; visit 2: 20 out -> 30 > 15: lagging.
    assert slow.queue.qsize() == 30 and slow.dropped == 30 and slow.delivered == 30
    assert slow.lagging and all(not s.lagging and s.dropped == 0 for s in fast)
    kept = [slow.queue.get_nowait() for _ in range(30)]
    assert [m.seq for m in kept] == list(range(31, 61))  # the newest 30; the gap is 1-30


def test_a_filter_that_fails_costs_its_subscriber_that_batch_alone(visit: tuple) -> None:
    """A filter that raises while evaluating (e.g. an overflow that its compile checks did not
    foresee) loses that subscriber the batch, counted; the others, and its next batch, go on."""
    src, objects, ss, packets = visit
    table = alert_table(src, objects, ss)
    fan = AlertFanout(queue_size=100)
    calls = 0

    def overflow_once(get: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OverflowError("Python integer out of bounds for int64")
        return get("diaSource.snr") > 0

    bright = compile_filter("diaSource.snr > 0")
    flaky = fan.subscribe("flaky", dataclasses.replace(bright, _root=overflow_once))
    steady = fan.subscribe("steady", bright)
    broker = fan.subscribe("broker", full_stream=True)
    for v in range(2):
        fan.publish_visit(v, src["diaSourceId"], packets, table)
    assert (flaky.failures, flaky.delivered) == (1, 20)
    assert (steady.failures, steady.delivered, broker.delivered) == (0, 40, 800)


def test_fanout_rejects_bad_subscriptions() -> None:
    fan = AlertFanout()
    fan.subscribe("a", compile_filter("snr > 5"))
    with pytest.raises(InvalidInputError, match="already exists"):
        fan.subscribe("a", compile_filter("snr > 5"))
    with pytest.raises(InvalidInputError, match="not both or neither"):
        fan.subscribe("b")
