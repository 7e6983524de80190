"""Test-only component: the publishing side of the alert stream (AlertSpool + AlertStreamRpc)
inside a real component actor, until the AlertPublisher is built. On command it encodes a
small synthetic CCD batch and publishes it to its spool, as the AlertPublisher will."""

from __future__ import annotations

import numpy as np

from base.alerts import alert_table
from base.alerts.avro_columnar import encode_alert_batch
from base.alerts.spool import AlertSpool, AlertStreamRpc
from base.apdb import IdPacker
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from state.controller import Controller


class AlertPublisher(Controller, AlertStreamRpc):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.spool = AlertSpool()

    async def do_publishSample(self, *, visit: int, detector: int, n: int = 50) -> dict:
        rng = np.random.default_rng(visit * 1000 + detector)
        ra, dec = random_sky(rng, n, 200.0, 10.0, 0.1)
        src = dia_sources(rng, ra, dec, visit, detector, 60990.0, packer=IdPacker(5))
        src["diaObjectId"] = src["diaSourceId"].copy()
        objects = dia_objects_from_sources(src, 60990.0)
        batch = encode_alert_batch(src, objects)
        seq = self.spool.publish(visit, detector, batch.ids, batch, alert_table(src, objects))
        return {"seq": seq, "ids": batch.ids.tolist(), "snr": src["snr"].tolist()}
