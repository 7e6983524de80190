"""ISR: geometry parsing, overscan, assembly with flips, crosstalk, masks, variance."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms import mask as mk
from algorithms.geometry import AmpGeometry, CcdGeometry, Section, parse_iraf_section
from algorithms.interp import interpolate_masked
from algorithms.isr import Calibrations, crosstalk_correct, overscan_correct, run_isr
from algorithms.synthetic import SimConfig, make_geometry


def test_parse_iraf_section_plain_and_flipped() -> None:
    s = parse_iraf_section("[1:512,1:2002]")
    assert (s.x0, s.x1, s.y0, s.y1, s.flip_x, s.flip_y) == (0, 512, 0, 2002, False, False)
    f = parse_iraf_section("[512:1,4004:2003]")
    assert (f.x0, f.x1, f.y0, f.y1, f.flip_x, f.flip_y) == (0, 512, 2002, 4004, True, True)
    assert parse_iraf_section(f.to_iraf()) == f
    for bad in ("[0:10,1:5]", "1:10,1:5", "[a:b,1:2]"):
        with pytest.raises(ValueError):
            parse_iraf_section(bad)


def test_amp_geometry_from_header_and_validation() -> None:
    hdr = {
        "EXTNAME": "C10", "DATASEC": "[1:100,1:50]", "BIASSEC": "[101:110,1:50]",
        "PARSEC": "[1:110,51:55]", "DETSEC": "[200:101,1:50]", "GAIN": 1.5, "RDNOISE": 5.0,
        "SATURATE": 60000.0,
    }  # fmt: skip
    amp = AmpGeometry.from_header(hdr)
    assert amp.name == "C10" and amp.detector.flip_x and amp.parallel_overscan is not None
    with pytest.raises(ValueError):
        AmpGeometry.from_header({**hdr, "DETSEC": "[1:99,1:50]"})
    with pytest.raises(ValueError):
        CcdGeometry(amps=(amp,), nx=300, ny=50)


def test_overscan_row_wise_robust() -> None:
    rng = np.random.default_rng(0)
    amp = make_geometry(SimConfig(nx=128, ny=128)).amps[0]
    raw = np.full((64 + 16, 64 + 32), 1000.0)
    rows = 20.0 * np.sin(np.arange(raw.shape[0]) / 5.0)[:, None]
    raw += rows + rng.normal(0, 2.0, raw.shape)
    raw[:64, :64] += 300.0
    raw[10, 64 + 5] = 65535.0
    out = overscan_correct(raw, amp)
    assert out.shape == (64, 64)
    assert abs(np.median(out) - 300.0) < 1.0
    assert np.std(out.mean(axis=1)) < 1.0


def test_crosstalk_removed() -> None:
    a = np.zeros((20, 20), np.float32)
    b = np.zeros((20, 20), np.float32)
    a[5, 5] = 1e5
    c = np.array([[0.0, 0.0], [1e-3, 0.0]])
    b += 1e-3 * a
    amps: list[np.ndarray | None] = [a, b]
    crosstalk_correct(amps, c)
    assert abs(float(amps[1][5, 5])) < 1e-3
    with pytest.raises(ValueError):
        crosstalk_correct(amps, np.zeros((3, 3)))


def _flat_raws(cfg: SimConfig, level_e: float) -> tuple[list[np.ndarray | None], CcdGeometry]:
    geom = make_geometry(cfg)
    rng = np.random.default_rng(2)
    raws: list[np.ndarray | None] = []
    for a in geom.amps:
        raw = np.full((a.data.ny + cfg.parallel_overscan, a.data.nx + cfg.serial_overscan), 20000.0)
        yy, xx = np.mgrid[0 : a.data.ny, 0 : a.data.nx]
        det_x = a.detector.x1 - 1 - xx if a.detector.flip_x else a.detector.x0 + xx
        det_y = a.detector.y1 - 1 - yy if a.detector.flip_y else a.detector.y0 + yy
        sig = level_e + 0.5 * det_x + 0.25 * det_y
        raw[: a.data.ny, : a.data.nx] += sig / a.gain
        raw += rng.normal(0, a.read_noise / a.gain, raw.shape)
        raws.append(raw.astype(np.float32))
    return raws, geom


def test_assembly_flips_and_variance() -> None:
    cfg = SimConfig(nx=128, ny=128)
    raws, geom = _flat_raws(cfg, 1000.0)
    res = run_isr(raws, geom, Calibrations(), exptime=30.0)
    yy, xx = np.mgrid[0:128, 0:128]
    expected = 1000.0 + 0.5 * xx + 0.25 * yy
    inner = np.s_[8:-8, 8:-8]
    resid = (res.image - expected)[inner].reshape(14, 8, 14, 8).mean(axis=(1, 3))
    assert np.abs(resid).max() < 5.0
    assert np.std((res.image - expected)[inner]) == pytest.approx(6.0, rel=0.1)
    assert np.median(res.variance) == pytest.approx(np.median(expected) + 36.0, rel=0.02)
    assert res.flags == []


def test_saturation_bleed_defects_nan_and_missing_amp() -> None:
    cfg = SimConfig(nx=128, ny=128)
    raws, geom = _flat_raws(cfg, 500.0)
    a0 = raws[0]
    assert a0 is not None
    a0[30, 20] = 65535.0
    a0[31:40, 20] = 0.85 * geom.amps[0].saturation
    a0[50, 50] = np.nan
    raws[3] = None
    defects = np.zeros((128, 128), bool)
    defects[:, 100] = True
    res = run_isr(raws, geom, Calibrations(defects=defects), exptime=30.0)
    assert res.mask[30, 20] & mk.SAT and res.mask[38, 20] & mk.SAT
    assert not res.mask[45, 20] & mk.SAT
    assert res.mask[10, 100] & mk.BAD
    assert res.mask[50, 50] & mk.NO_DATA
    assert np.all(res.mask[geom.amps[3].detector.slices] & mk.NO_DATA)
    assert any(f.startswith("missing_amplifier:") for f in res.flags)
    assert any(f.startswith("nan_pixels:") for f in res.flags)
    assert np.all(res.mask[:, :4] & mk.EDGE)
    img = res.image.copy()
    done = interpolate_masked(img, res.mask, mk.BAD)
    assert done[10, 100] and res.mask[10, 100] & mk.INTRP
    assert abs(img[60, 100] - 0.5 * (img[60, 99] + img[60, 101])) < 1e-3


def test_isr_rejects_mismatched_inputs() -> None:
    cfg = SimConfig(nx=128, ny=128)
    raws, geom = _flat_raws(cfg, 500.0)
    with pytest.raises(ValueError):
        run_isr(raws[:2], geom, Calibrations(), 30.0)
    with pytest.raises(ValueError):
        run_isr(raws, geom, Calibrations(flat=np.ones((10, 10))), 30.0)
    with pytest.raises(ValueError):
        run_isr([None] * 4, geom, Calibrations(), 30.0)
    assert Section(0, 1, 0, 1).nx == 1
