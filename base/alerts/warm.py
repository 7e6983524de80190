"""Warm-up of the alert encoder, run when the AlertPublisher starts.

A few simulated DIASources with their objects, history and cutouts are encoded as one batch
and read back, so that the encoder's numba kernels are compiled (or loaded from numba's
on-disk cache) at start, not inside the first visit's publication, and an encoder that writes
what the reader cannot read fails the start.
"""

from __future__ import annotations

import time

import numpy as np

from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from state.errors import StartupError

from .avro_columnar import encode_alert_batch
from .batch import BufferPool
from .packet import decode
from .schema import AlertSchema

_N = 8
_MJD = 60900.0


def warm_up_encoder(schema: AlertSchema, pool: BufferPool) -> float:
    """Encode and decode one small batch with ``schema`` from ``pool``; seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    ra, dec = random_sky(rng, _N, 80.0, 10.0, 0.05)
    sources = dia_sources(rng, ra, dec, 2, 0, _MJD)
    sources["diaObjectId"] = sources["diaSourceId"].copy()
    history = dia_sources(rng, ra, dec, 1, 0, _MJD - 1.0)
    history["diaObjectId"] = sources["diaObjectId"].copy()
    objects = dia_objects_from_sources(sources, _MJD)
    cutouts = [(b"difference", None, b"template")] * _N
    batch = encode_alert_batch(
        sources, objects, history=history, cutouts=cutouts, schema=schema, pool=pool
    )
    alert = decode(batch.packet(_N - 1))
    want = int(sources["diaSourceId"][_N - 1])
    if alert["diaSourceId"] != want or alert["cutoutTemplate"] != b"template":
        got = alert["diaSourceId"]
        raise StartupError(f"the alert encoder does not read back: diaSourceId {got} != {want}")
    return time.perf_counter() - t0
