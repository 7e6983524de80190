"""The fast alert path: templated cutout FITS, one-buffer batches, the buffer pool."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from base.alerts import decode
from base.alerts.avro_columnar import CutoutPlanes, encode_alert_batch, encode_alerts
from base.alerts.batch import BufferPool
from base.alerts.fits import CutoutTemplate, cutout_fits, tan_wcs
from base.apdb.simulate import dia_objects_from_sources, dia_sources, random_sky
from state.errors import InvalidInputError

SCALE = 0.2 / 3600


def _stamps(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = rng.normal(0, 30, (n, 30, 30)).astype(np.float32)
    return img, np.abs(img) + 100, rng.integers(0, 1 << 20, (n, 30, 30)).astype(np.int32)


def test_template_writes_the_bytes_of_cutout_fits() -> None:
    rng = np.random.default_rng(1)
    img, var, mask = _stamps(rng, 6)
    ra, dec = rng.uniform(0, 360, 6), rng.uniform(-89, 89, 6)
    template = CutoutTemplate.build(
        (30, 30), tan_wcs(0, 0, 15.5, 15.5, (-SCALE, 0, 0, SCALE)), extra={"BUNIT": "nJy"}
    )
    out = template.render(img, var, mask, {"CRVAL1": ra, "CRVAL2": dec})
    for k in range(6):
        wcs = tan_wcs(ra[k], dec[k], 15.5, 15.5, (-SCALE, 0, 0, SCALE))
        assert out[k].tobytes() == cutout_fits(img[k], var[k], mask[k], wcs, {"BUNIT": "nJy"})
    with fits.open(io.BytesIO(out[3].tobytes())) as hdul:
        assert [h.name for h in hdul] == ["IMAGE", "VARIANCE", "MASK"]
        np.testing.assert_array_equal(hdul["MASK"].data, mask[3])
        sky = WCS(hdul["VARIANCE"].header).pixel_to_world_values(14.5, 14.5)
        np.testing.assert_allclose(sky, (ra[3], dec[3]), atol=1e-9)
    scratch = np.zeros((10, template.nbytes), dtype=np.uint8)
    again = template.render(img, var, mask, {"CRVAL1": ra, "CRVAL2": dec}, out=scratch)
    assert again.base is scratch and np.array_equal(again, out)
    with pytest.raises(ValueError, match="values must give exactly"):
        template.render(img, var, mask, {"CRVAL1": ra})
    with pytest.raises(ValueError, match="shape"):
        template.render(img[:, :10], var, mask, {"CRVAL1": ra, "CRVAL2": dec})


def test_batch_with_cutout_planes_equals_the_bytes_path() -> None:
    rng = np.random.default_rng(2)
    n = 40
    ra, dec = random_sky(rng, n, 80.0, 10.0, 0.05)
    src = dia_sources(rng, ra, dec, 3, 1, 60900.0)
    src["diaObjectId"] = src["diaSourceId"].copy()
    src["diaObjectId"][::4] = 0
    objects = dia_objects_from_sources({k: v[src["diaObjectId"] != 0] for k, v in src.items()},
                                       60900.0)  # fmt: skip
    template = CutoutTemplate.build((30, 30), tan_wcs(0, 0, 15.5, 15.5, (-SCALE, 0, 0, SCALE)))
    planes = [template.render(*_stamps(rng, n), {"CRVAL1": ra, "CRVAL2": dec}) for _ in range(2)]
    triples = [(bytes(a), None, bytes(b)) for a, b in zip(*planes, strict=True)]
    pool = BufferPool(granule=1 << 16)
    batch = encode_alert_batch(
        src, objects, cutouts=CutoutPlanes(planes[0], None, planes[1]), pool=pool
    )
    assert batch.packets() == encode_alerts(src, objects, cutouts=triples)
    alert = decode(batch.packet(5))
    assert alert["diaSourceId"] == int(src["diaSourceId"][5])
    assert alert["cutoutScience"] is None and alert["cutoutTemplate"] == triples[5][2]
    with pytest.raises(InvalidInputError, match="cutout planes"):
        encode_alert_batch(src, objects, cutouts=CutoutPlanes(planes[0][:3], None, None))


def test_buffer_pool_reuses_only_released_buffers() -> None:
    pool = BufferPool(granule=1 << 12)
    a = pool.get(1000)
    view = memoryview(a)[:10]
    del a
    b = pool.get(1000)  # the first is still referenced through the memoryview
    assert (pool.allocated, pool.reused) == (2, 0)
    del view
    c = pool.get(900)
    assert (pool.allocated, pool.reused) == (2, 1)
    assert len(c) == 900 and len(b) == 1000
    small = BufferPool(capacity_bytes=1 << 12, granule=1 << 12)
    small.get(100)
    small.get(5000)  # over capacity: handed out, not pooled
    assert small.pooled_bytes == 1 << 12
