"""The columnar Avro encoder writes exactly the bytes fastavro writes for the same alerts."""

from __future__ import annotations

import numpy as np

from base.alerts import build_alerts, decode, serialize
from base.alerts.avro_columnar import encode_alerts, varint
from base.alerts.fits import cutout_fits, tan_wcs
from base.apdb import IdPacker
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky


def test_columnar_encoder_is_byte_identical_to_fastavro() -> None:
    rng = np.random.default_rng(5)
    ra, dec = random_sky(rng, 60, 10.0, -60.0, 0.05)
    src = dia_sources(rng, ra, dec, 9, 4, 60950.0)
    src["diaObjectId"] = src["diaSourceId"].copy()
    src["diaObjectId"][::7] = 0
    src["ssObjectId"][3] = -5  # negative varints too
    src["psfFlux"][::4] = np.nan
    src["reliabilityVersion"] = np.array(["v1.2", ""] * 30, dtype=object)
    objects = dia_objects_from_sources(
        {k: v[src["diaObjectId"] != 0] for k, v in src.items()}, 60950.0
    )
    hist = dia_sources(rng, np.repeat(ra, 3), np.repeat(dec, 3), 8, 4, 60940.0, packer=IdPacker(3))
    hist["diaObjectId"] = np.repeat(src["diaSourceId"], 3)
    hist["midpointMjdTai"] = 60940.0 - rng.uniform(0, 300, 180)  # shuffled times
    forced = {
        "diaForcedSourceId": IdPacker().forced_source_ids(8, 4, 120),
        "diaObjectId": np.repeat(src["diaSourceId"], 2), "ra": np.repeat(ra, 2),
        "dec": np.repeat(dec, 2), "visit": np.full(120, 8), "detector": np.full(120, 4),
        "psfFlux": rng.normal(0, 100, 120), "psfFluxErr": np.full(120, 100.0),
        "midpointMjdTai": np.full(120, 60940.0), "band": np.array(["i"] * 120, dtype=object),
        "timeProcessedMjdTai": np.full(120, 60940.1),
    }  # fmt: skip
    ss = {"diaSourceId": src["diaSourceId"][3:4], "ssObjectId": np.array([77]),
          "designation": np.array(["2026 AA1"], dtype=object), "eclLambda": np.array([1.5]),
          "eclBeta": np.array([-0.5]), "galLon": np.array([200.0]),
          "galLat": np.array([-30.0])}  # fmt: skip
    w = tan_wcs(10.0, -60.0, 15.5, 15.5, (-5e-5, 0, 0, 5e-5))
    img = np.ones((30, 30))
    cutouts = [(cutout_fits(img, img, img, w), None, b"x" * k) for k in range(60)]
    args = (src, objects, hist, forced, ss, cutouts)
    reference = serialize(build_alerts(*args, observation_reason="ddf", target_name="COSMOS"))
    fast = encode_alerts(*args, observation_reason="ddf", target_name="COSMOS")
    assert fast == reference
    prv = decode(fast[1])["prvDiaSources"]
    assert len(prv) == 3 and [p["midpointMjdTai"] for p in prv] == sorted(
        p["midpointMjdTai"] for p in prv
    )


def test_varint_edges() -> None:
    for v, expect in [(0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (63, b"\x7e"), (64, b"\x80\x01")]:
        assert varint(v) == expect
    assert len(varint(2**61)) == 9 and len(varint(2**62)) == 10 and len(varint(-(2**63))) == 10
