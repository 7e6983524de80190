"""The CCD worker child across CCDs: reused, killed when a CCD hangs, and its shared inputs.

The processor's child (``base.isolated``) runs ``base.prompt.ccd_work`` on the inputs the
registry resolved, with the pool's decoded-input cache (``base.input_cache``): calibrations
and templates decoded once and memory-mapped by every worker after that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from astropy.io import fits

from base.ccd_inputs import (
    NightDirectoryRepository,
    ResolvedInputs,
    ResolvedRepository,
    _verified,
    read_calibrations,
    verify_product,
)
from base.ccd_processing import CcdProcessing
from base.input_cache import SCAN_EVERY, TMP_PREFIX, InputCache
from base.isolated import IsolatedWorker, WorkTimeoutError
from base.prompt import ccd_work
from base.prompt.ccd_processor import CACHE, CcdProcessor
from config.cameras import load_camera
from state.errors import InvalidInputError
from summit.night_files import open_night

WORK = "base.prompt.ccd_work"
DETECTOR = 1
CACHE_BYTES = 2**30


@pytest.fixture(scope="module")
def night(dense_mini_night: Path) -> Path:
    return dense_mini_night


def _sha(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _ccds(night: Path) -> list[tuple[ResolvedInputs, dict[str, Any], str]]:
    """(inputs as the registry resolves them, nextVisit payload, raw path) of each visit."""
    source, repo = open_night(night), NightDirectoryRepository(night)
    out = []
    for v in source.visits:
        info = source.visit_info(v)
        calibs = repo.get_calibs(DETECTOR, v.band, v.mjd_start)
        template = repo.get_template(v.field_id, v.band, DETECTOR)
        refcat = repo.get_refcat()
        paths = [p for p in (*dataclasses.astuple(calibs), template, refcat) if p is not None]
        inputs = ResolvedInputs(
            visit=v.visit_id, detector=DETECTOR, calibs=calibs, template=template, refcat=refcat,
            checksums=tuple((str(p), _sha(p)) for p in paths),
        )  # fmt: skip
        out.append((inputs, info, str(source.raw(v, DETECTOR))))
    return out


def _entries(root: Path) -> list[Path]:
    return InputCache(root, CACHE_BYTES).entries()


def _stale(root: Path) -> list[Path]:
    return list(root.glob(f"{TMP_PREFIX}*"))


async def test_second_ccd_reuses_the_child_and_its_shared_inputs(
    night: Path, tmp_path: Path
) -> None:
    cache = (str(tmp_path / "cache"), CACHE_BYTES)
    (first, info1, raw1), (second, info2, raw2) = _ccds(night)
    worker = IsolatedWorker("reuse")
    try:
        await worker.run(f"{WORK}:stall", 0.0, timeout=300)  # the child's imports
        pid = worker.pid
        began = _cpu(pid)
        await worker.run(f"{WORK}:preload", first, info1, DETECTOR, cache=cache, timeout=300)
        one = await worker.run(f"{WORK}:process", first, info1, DETECTOR, raw1, cache=cache,
                               timeout=300)  # fmt: skip
        decoded = sorted(p.name for p in _entries(tmp_path / "cache"))
        assert len(decoded) == 4, "bias, dark, flat and defects are decoded once (not templates)"
        two = await worker.run(f"{WORK}:process", second, info2, DETECTOR, raw2, cache=cache,
                               timeout=300)  # fmt: skip
        assert worker.pid == pid and worker.restarts == 0, "the same child took the second CCD"
        child_s = _cpu(pid) - began
        assert sorted(p.name for p in _entries(tmp_path / "cache")) == decoded, (
            "the second visit mapped the first one's decoded calibrations"
        )
    finally:
        worker.close()
    assert one["ok"] and two["ok"], (one["reason"], two["reason"])
    # The same CCD without the cache, in this process: the mapped inputs change nothing.
    plain = ccd_work.process(second, info2, DETECTOR, raw2)
    for name in ("ra", "dec", "psfFlux"):
        np.testing.assert_array_equal(two["ccd"]["sources"][name], plain["ccd"]["sources"][name])
    assert two["ccd"]["cutouts"] == plain["ccd"]["cutouts"]
    # The child's CPU, CCD by CCD: every part counted once, and all of it (/proc's figure; the
    # last answer's pickling and the clock's 10 ms ticks aside).
    split = [{k: r["summary"][k] for k in ccd_work.CPU_SPLIT} for r in (one, two)]
    for s in split:
        assert all(v >= 0 for v in s.values()), s
        assert s["pixel_cpu_s"] > 0 and s["cpu_raw_s"] > 0 and s["minor_faults"] > 0, s
        assert s["cpu_preload_s"] > 0, "preloaded at nextVisit (first) or in process (second)"
    parts = sum(v for s in split for k, v in s.items() if k.endswith("_s") and k != "cpu_gc_s")
    assert parts == pytest.approx(child_s, abs=0.05 + 0.03 * child_s), (split, child_s)


def _cpu(pid: int | None) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class _Stalls:
    """An array that never comes: its writer is killed while it waits."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        time.sleep(120)
        raise AssertionError("not reached")


def hang_while_caching(root: str, source: str) -> None:
    """Worker target: decode a product into the cache and hang half-way through writing it."""
    InputCache(Path(root), CACHE_BYTES).load(
        Path(source), "stalls", None, lambda: ({"done": np.zeros(4), "never": _Stalls()}, {})
    )  # type: ignore[dict-item]


async def test_hung_ccd_is_killed_and_the_next_gets_a_fresh_child_and_no_leftovers(
    night: Path, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    cache = (str(root), CACHE_BYTES)
    (first, info1, raw1), _ = _ccds(night)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    worker = IsolatedWorker("hang")
    try:
        await worker.run(f"{WORK}:preload", first, info1, DETECTOR, cache=cache, timeout=300)
        hung = worker.pid
        with pytest.raises(WorkTimeoutError):
            await worker.run(f"{WORK}:stall", 120, timeout=2)  # the processor's hung CCD
        source = root.parent / "product.fits"
        source.write_bytes(b"x" * 100)
        await worker.run(f"{__name__}:_sha", source, timeout=300)  # the fresh child is up
        killed = worker.pid
        with pytest.raises(WorkTimeoutError):
            await worker.run(f"{__name__}:hang_while_caching", str(root), str(source), timeout=10)
        assert worker.pid is None and worker.restarts == 2, "each hung child was killed"
        assert len(_stale(root)) == 1, "the killed writer left its temporary directory"
        done = await worker.run(f"{WORK}:process", first, info1, DETECTOR, raw1, cache=cache,
                                timeout=300)  # fmt: skip
        assert worker.pid not in (None, hung, killed), "the next CCD ran in a fresh child"
    finally:
        worker.close()
    assert done["ok"], done["reason"]
    assert _stale(root) == [], "the fresh child removed the killed writer's leftovers"
    assert all((e / "meta.json").is_file() for e in _entries(root)), "no half-written entry"
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not {n for n in shm_after - shm_before if "dmcs" in n or n.startswith("psm_")}


def test_cached_inputs_are_the_decoded_files_read_only(night: Path, tmp_path: Path) -> None:
    (inputs, _, _), _ = _ccds(night)
    det = load_camera("mini").detector(DETECTOR)
    cache = InputCache(tmp_path / "cache", CACHE_BYTES)
    plain, flags = read_calibrations(inputs.calibs, det)
    for _ in range(2):  # decoded, then mapped
        cached, cached_flags = read_calibrations(inputs.calibs, det, cache)
        assert cached_flags == flags
        for name in ("bias", "dark", "flat", "defects"):
            a, b = getattr(plain, name), getattr(cached, name)
            assert a.dtype == b.dtype and not b.flags.writeable
            np.testing.assert_array_equal(a, b)
    assert (cache.hits, cache.misses) == (4, 4)


def test_templates_are_decoded_read_only_and_not_kept_in_the_input_cache(
    night: Path, tmp_path: Path
) -> None:
    """A template is decoded at each preload (written to the cache it cost more than its
    decoding, and was evicted before its field came back); read-only, as the cache's arrays."""
    (inputs, info, _), _ = _ccds(night)
    assert inputs.template is not None
    cache = InputCache(tmp_path / "cache", CACHE_BYTES)
    pre = CcdProcessing(ResolvedRepository(inputs, cache), cache=cache).preload(info, DETECTOR)
    assert pre.template is not None and not pre.flags
    with fits.open(inputs.template) as h:
        np.testing.assert_array_equal(pre.template.image, h["IMAGE"].data)
        np.testing.assert_array_equal(pre.template.variance, h["VARIANCE"].data)
    for a in (pre.template.image, pre.template.variance, pre.template.psf):
        assert not a.flags.writeable
    assert (cache.hits, cache.misses) == (0, 4), "bias, dark, flat and defects only"


def test_checksum_verified_once_per_node_and_rechecked_when_the_file_changes(
    tmp_path: Path,
) -> None:
    product = tmp_path / "flat.fits"
    product.write_bytes(b"flat" * 1000)
    good = _sha(product)
    cache = InputCache(tmp_path / "cache", CACHE_BYTES)
    verify_product(product, good, cache)
    assert cache.verified(product, good)
    _verified.clear()  # another process: only the node's marker is left
    assert InputCache(tmp_path / "cache", CACHE_BYTES).verified(product, good)
    product.write_bytes(b"FLAT" * 1000)  # changed after registration
    os.utime(product, ns=(time.time_ns(), time.time_ns() + 10**9))
    inputs = ResolvedInputs(visit=1, detector=0, refcat=product, checksums=((str(product), good),))
    with pytest.raises(InvalidInputError, match="corrupt"):
        ResolvedRepository(inputs, cache).get_refcat()


def test_cache_evicts_least_recently_used_and_drops_damaged_entries(tmp_path: Path) -> None:
    sources = []
    for i in range(3):
        p = tmp_path / f"src{i}"
        p.write_bytes(bytes([i]) * 10)
        sources.append(p)
    cache = InputCache(tmp_path / "cache", max_bytes=2 * 8 * 10_000 + 4096)

    def put(i: int) -> np.ndarray:
        arrays, _ = cache.load(
            sources[i], "a", None, lambda: ({"a": np.full(10_000, float(i))}, {"i": i})
        )
        return arrays["a"]

    put(0)
    time.sleep(0.02)
    put(1)
    time.sleep(0.02)
    assert put(0)[0] == 0.0  # used again: now the most recent
    time.sleep(0.02)
    put(2)
    assert len(cache.entries()) == 2 and cache.misses == 3
    put(0)
    put(2)
    assert cache.misses == 3, "the least recently used (1) went, 0 and 2 stayed"
    for entry in cache.entries():
        (entry / "a.npy").write_bytes(b"truncated")
    assert put(0)[0] == 0.0 and cache.misses == 4, "a damaged entry is decoded again"


async def test_processor_hands_its_worker_the_pools_cache(tmp_path: Path) -> None:
    """Every processor of a node shares one cache beside their data directories; 0 GB is none."""

    def processor(name: str, **settings: Any) -> CcdProcessor:
        return CcdProcessor(name, sink=lambda _e: None, settings=settings, data_dir=tmp_path / name)

    pool = [processor(f"CcdProcessor{i}", index=i, pool_size=2) for i in range(2)]
    off = processor("CcdProcessor9", input_cache_gb=0)
    try:
        specs = {p.input_cache for p in pool}
        assert specs == {(str((tmp_path / CACHE).resolve()), 6 * 2**30)}
        assert off.input_cache is None
    finally:
        for p in (*pool, off):
            await p.close()


def test_cache_looks_at_every_entry_only_when_its_writes_may_pass_the_bound(
    tmp_path: Path,
) -> None:
    """A look (a stat of every file) after each write made a night's first preloads quadratic;
    a process looks after writing 1/SCAN_EVERY of the bound, or when its count passes it."""
    entry_bytes = 8 * 1_000
    cache = InputCache(tmp_path / "cache", max_bytes=SCAN_EVERY * 10 * entry_bytes)

    def put(c: InputCache, i: int) -> None:
        src = tmp_path / f"src{i}"
        src.write_bytes(i.to_bytes(4, "little"))
        c.load(src, "a", None, lambda: ({"a": np.full(1_000, float(i))}, {}))

    for i in range(40):
        put(cache, i)
    assert len(cache.entries()) == 40 and cache.scans <= 1 + 40 // 10
    # Another process filled the cache past the bound meanwhile: this one's next due look,
    # not a look after each write, brings it back within.
    small = InputCache(tmp_path / "cache", max_bytes=20 * (entry_bytes + 256))
    scans = small.scans
    put(small, 100)
    assert small.scans == scans + 1 and len(small.entries()) <= 20
    for i in range(101, 105):
        put(small, i)
    assert len(small.entries()) <= 20, "over the bound by its own count: looked each time"
