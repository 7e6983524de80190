"""A camera's ``[sky]`` section: applied by the simulation, and a ``mini`` night processable.

``mini`` CCDs are 0.0008 deg^2; its ``[sky]`` section points it at a crowded field so every
CCD holds enough stars for a PSF model and an astrometric fit, and a few transients.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import config.cameras as cameras
from base.ccd_inputs import NightDirectoryRepository
from base.ccd_processing import CcdProcessing
from config.cameras import SkyConfig, load_camera
from state.errors import ConfigurationError
from summit.night_files import open_night
from summit.simulation import plan_night
from summit.sky import SkyParams


def test_sky_section_overrides_only_what_it_sets(tmp_path: Path) -> None:
    for name in ("lsstcam", "comcam", "latiss"):
        assert load_camera(name).sky == SkyConfig()
        assert SkyParams.for_camera(load_camera(name).sky) == SkyParams()
    mini = SkyParams.for_camera(load_camera("mini").sky)
    default = SkyParams()
    assert mini.star_density_pole >= 50 * default.star_density_pole
    assert mini.transient_density >= 1000 * default.transient_density
    assert mini.star_density_plane == default.star_density_plane
    assert plan_night("mini", 2, 1, tmp_path).sky().params == mini


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ("[sky]\nstar_density = 1e5\n", "star_density"),
        ("[sky]\nstar_density_pole = -1.0\n", "star_density_pole"),
        ("[sky]\ntransient_density = 'many'\n", "transient_density"),
    ],
)
def test_bad_sky_section_is_a_configuration_error(
    section: str, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("layouts.toml", "photometry.toml"):
        shutil.copy(cameras.CAMERA_DIR / name, tmp_path / name)
    text = (cameras.CAMERA_DIR / "mini.toml").read_text().split("\n[sky]\n")[0]
    (tmp_path / "broken.toml").write_text(text + "\n" + section)
    monkeypatch.setattr(cameras, "CAMERA_DIR", tmp_path)
    with pytest.raises(ConfigurationError, match=match):
        load_camera.__wrapped__("broken")


def test_on_the_fly_render_uses_the_cameras_sky(mini_night: Path, tmp_path: Path) -> None:
    source = open_night(mini_night)
    visit = source.visits[1]
    source.simulator().write_raw(visit, 3, tmp_path / "raw.fits")
    assert (tmp_path / "raw.fits").read_bytes() == source.raw(visit, 3).read_bytes()


def test_every_ccd_of_a_mini_night_is_processed(mini_night: Path) -> None:
    source = open_night(mini_night)
    repo = NightDirectoryRepository(mini_night)
    adapter = CcdProcessing(repo)
    n_dia = 0
    for v in source.visits:
        info = {"visit": v.visit_id, "camera": "mini", "band": v.band, "ra": v.ra,
                "dec": v.dec, "rotSkyPos": v.rot_sky_pos, "fieldId": v.field_id,
                "startMjd": v.mjd_start, "exposureTime": v.exptime}  # fmt: skip
        for det in source.camera.detectors:
            pre = adapter.preload(info, det.id)
            assert pre.flags == [], (v.visit_id, det.id, pre.flags)
            assert len(pre.refcat.ra) >= 20
            raw = repo.get_raw(v.visit_id, det.id)
            assert raw is not None
            o = adapter.process(raw, pre)
            assert o.ok, (v.visit_id, det.id, o.reason)
            assert o.summary["psf_n_stars"] >= 5 and o.summary["astrometry_n_matched"] >= 5
            n_dia += len(o.diasources)
    assert n_dia >= 1
