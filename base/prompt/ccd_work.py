"""The CCD processor's CPU work, run inside its child process (:mod:`base.isolated`).

The child keeps the preloaded inputs of the visits announced by ``nextVisit`` in this
module's memory, so ``process`` finds them when the raw arrives. ``source`` is the
``ResolvedInputs`` the processor (or a batch reprocessing) looked up in the registry for this
one CCD (a fresh adapter each call: it costs nothing). ``cache``, when given, is the
directory of the :class:`~base.input_cache.InputCache` the node's workers share (and its bound
in bytes): calibrations and templates are then decoded once and memory-mapped after that.
Results go back as plain dicts and numpy arrays (pickled through the pipe).
``warm_up`` runs the chain once on a small simulated CCD when the processor starts, so that
the first visit of a night finds its numba kernels compiled and its modules loaded.
Each processed CCD's ``summary`` carries the child's CPU split (:data:`CPU_SPLIT`), so that
the CPU of the whole child is accounted for CCD by CCD (``benchmarks/latency.py`` sums it).
"""

from __future__ import annotations

import fcntl
import gc
import resource
import tempfile
import time
from collections import OrderedDict
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np

from algorithms.pipeline import ExposureInfo, PipelineConfig, ReferenceCatalog, Template, run_ccd
from algorithms.synthetic import SimConfig, make_visit
from algorithms.wcs import TanSipWcs
from base.apdb.ids import IdPacker
from base.ccd_inputs import ResolvedInputs, ResolvedRepository
from base.ccd_processing import CcdOutputs, CcdProcessing, Preloaded
from base.cutouts import cutout_to_fits
from base.input_cache import InputCache
from base.isolated import take_outside_cpu
from base.prompt.requests import CcdResults
from base.prompt_records.model import WORKER_CPU
from base.tiled_fits import warm_up_decoder
from state.clock import tai_mjd, tai_now
from state.contracts.data_plane import CcdVisit
from state.errors import InvalidInputError, StartupError

#: Preloaded (visit, detector) inputs kept at most (a few visits of one processor's CCDs:
#: a processor of a pool of two preloads 95 of ``lsstcam-lite``'s 189 at each ``nextVisit``).
MAX_PRELOADED = 256
#: Bytes of the process's own memory the kept preloads may hold; arrays memory-mapped from
#: the node's input cache are the page cache's, not counted.
MAX_PRELOADED_BYTES = 2 << 30
#: The warm-up's simulated CCD: a mini-sized one with a few transients, so that every stage
#: (detection, PSF, astrometry, difference imaging, DIASources, cutouts) runs.
WARM_UP_CCD = SimConfig(seed=99, n_transients=5)

#: The child's CPU split of one CCD, as ``summary`` keys (core-seconds; faults, a count), the
#: ``CcdOutcome`` fields that record it: ``cpu_preload_s`` the preloads run since the previous
#: CCD (at ``nextVisit``, or here when the CCD was not preloaded), ``cpu_handoff_s`` the
#: child's CPU outside its jobs since then (requests unpickled, answers pickled through the
#: pipe), ``cpu_raw_s`` the raw read and its checksum, ``pixel_cpu_s`` ``run_ccd``'s own
#: timer, ``cpu_outputs_s`` the cutouts' FITS and summary, ``cpu_rest_s`` the rest of
#: ``process`` (the DIASource columns, footprint and validation of the answer), ``cpu_gc_s``
#: the garbage collector's share of ``process``, ``minor_faults`` the page faults of
#: ``process`` and ``preload_minor_faults`` the preloads'.
CPU_SPLIT = WORKER_CPU

_preloaded: OrderedDict[tuple[int, int], tuple[Preloaded, int]] = OrderedDict()
_ids = IdPacker(release=0)
_caches: dict[tuple[str, int], InputCache] = {}

#: A cache's directory and its bound in bytes, as the processor hands them over.
CacheSpec = tuple[str, int]


class _CpuAccount:
    """The child's preload CPU and faults since the last CCD, and the collector's CPU."""

    def __init__(self) -> None:
        self.preload_s = 0.0
        self.preload_faults = 0
        self.gc_s = 0.0
        self._gc_began: float | None = None
        self._watching = False

    def take_preloads(self) -> tuple[float, int]:
        taken = (self.preload_s, self.preload_faults)
        self.preload_s, self.preload_faults = 0.0, 0
        return taken

    def watch_gc(self) -> None:
        if not self._watching:
            gc.callbacks.append(self._on_gc)
            self._watching = True

    def _on_gc(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_began = time.process_time()
        elif self._gc_began is not None:
            self.gc_s += time.process_time() - self._gc_began
            self._gc_began = None


_account = _CpuAccount()


def _usage() -> tuple[float, int]:
    """This process's CPU seconds (all threads, as ``run_ccd``'s timer) and minor faults."""
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _preload(adapter: CcdProcessing, visit_info: dict[str, Any], detector: int) -> Preloaded:
    c0, f0 = _usage()
    pre = adapter.preload(visit_info, detector)
    c1, f1 = _usage()
    _account.preload_s += c1 - c0
    _account.preload_faults += f1 - f0
    return pre


def input_cache(spec: CacheSpec | None) -> InputCache | None:
    """This process's cache for ``spec`` (opened once; its stale temporaries removed then)."""
    if spec is None:
        return None
    key = (str(spec[0]), int(spec[1]))
    if key not in _caches:
        _caches[key] = InputCache(Path(key[0]), key[1])
    return _caches[key]


def _adapter(source: ResolvedInputs, cache: CacheSpec | None = None) -> CcdProcessing:
    if not isinstance(source, ResolvedInputs):
        raise InvalidInputError(f"CCD inputs must be looked up in the registry, not {source!r}")
    opened = input_cache(cache)
    return CcdProcessing(ResolvedRepository(source, opened), cache=opened)


def warm_up() -> dict[str, Any]:
    """Process one simulated CCD with the processing's own configuration: numba compiles its
    kernels (or loads them from its on-disk cache) and the modules load now, not on the first
    visit. A chain that fails here would fail every CCD, so it raises.

    One warm-up at a time per numba cache directory: the processors of a pool compile the
    same kernels, so the second one waits and loads what the first one compiled, instead of
    compiling them again on the same cores."""
    t0 = time.perf_counter()
    lock = Path(numba.config.CACHE_DIR or tempfile.gettempdir()) / "dmcs-warm-up.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        done = _process_simulated_ccd(read_only=True)
        _process_simulated_ccd(read_only=False)
        warm_up_decoder()
    return {**done, "seconds": time.perf_counter() - t0, "waitedSeconds": waited}


def _read_only(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    view = a.view()
    view.flags.writeable = False
    return view


def _process_simulated_ccd(read_only: bool) -> dict[str, Any]:
    """``read_only``: calibrations and template as the node's input cache maps them (numba
    compiles its kernels once per array type, and a read-only array is another type: without
    this the first real CCD compiled them again, ~1 s); else writable, as reprocessing and a
    processor without the cache read them."""
    v = make_visit(WARM_UP_CCD)
    exp = ExposureInfo(visit=0, detector=0, exptime=v.exptime, initial_wcs=v.initial_wcs)
    ref = ReferenceCatalog(v.ref_ra, v.ref_dec, v.ref_flux)
    calibs, image, variance = v.calibs, v.template_image, v.template_variance
    if read_only:
        calibs = replace(
            calibs, **{f.name: _read_only(getattr(calibs, f.name)) for f in fields(calibs)}
        )
        image, variance = _read_only(image), _read_only(variance)
    template = Template(image, variance, v.template_wcs, v.template_psf)
    res = run_ccd(v.raw_amps, v.geometry, calibs, exp, ref, template, PipelineConfig())
    if not res.ok or not len(res.diasources):
        raise StartupError(f"the warm-up CCD did not process: {'; '.join(res.flags)}")
    for stamps in res.cutouts[:1]:
        for cutout in stamps.values():
            cutout_to_fits(cutout, {"VISIT": 0, "DETECTOR": 0})
    return {"diaSources": len(res.diasources)}


def preload(
    source: ResolvedInputs,
    visit_info: dict[str, Any],
    detector: int,
    cache: CacheSpec | None = None,
) -> list[str]:
    """Read everything but the raw for (visit, detector); returns the preload's flags."""
    CcdVisit.parse(visit_info)
    pre = _preload(_adapter(source, cache), visit_info, detector)
    _preloaded[(pre.visit, detector)] = (pre, heap_bytes(pre))
    held = sum(n for _, n in _preloaded.values())
    while len(_preloaded) > 1 and (len(_preloaded) > MAX_PRELOADED or held > MAX_PRELOADED_BYTES):
        held -= _preloaded.popitem(last=False)[1][1]
    return list(pre.flags)


def heap_bytes(pre: Preloaded) -> int:
    """Bytes of this process's memory that ``pre``'s arrays hold (memory-mapped ones aside)."""
    arrays = [getattr(pre.calibs, f.name) for f in fields(pre.calibs)]
    arrays += [pre.refcat.ra, pre.refcat.dec, pre.refcat.flux]
    if pre.template is not None:
        t = pre.template
        arrays += [t.image, t.variance, t.psf, t.mask]
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray) and not _mapped(a))


def _mapped(a: np.ndarray) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None
    return False


def stall(seconds: float) -> None:
    """Hold the worker (a slow CCD on demand: ``CcdProcessorSettings.stall_detectors``)."""
    time.sleep(seconds)


def process(
    source: ResolvedInputs,
    visit_info: dict[str, Any],
    detector: int,
    raw_path: str,
    cache: CacheSpec | None = None,
) -> dict[str, Any]:
    """Process one raw; ``{"ok", "reason", "stages", "summary", "ccd"}`` (``ccd`` when ok),
    a :class:`~state.contracts.data_plane.CcdWorkResult`; a visit that does not fit
    :class:`~state.contracts.data_plane.CcdVisit` raises ContractError before any work."""
    _account.watch_gc()
    began = _Began(*_usage(), _account.gc_s, take_outside_cpu(), *_account.take_preloads())
    visit = CcdVisit.parse(visit_info)
    adapter = _adapter(source, cache)
    key = (visit.visit, detector)
    kept = _preloaded.pop(key, None)
    pre = kept[0] if kept is not None else _preload(adapter, visit_info, detector)
    registered = source.raw_checksum if source.raw == Path(raw_path) else None
    out = adapter.process(raw_path, pre, registered or None)
    stages = {"preloadReady": pre.preload_tai, **out.stages}
    summary = quality(out)
    if not out.ok:
        summary.update(cpu_split(out, began))
        return {"ok": False, "reason": out.reason or "failed", "stages": stages, "summary": summary}
    ccd = CcdResults(
        visit=pre.visit,
        detector=detector,
        band=pre.band,
        day_obs=visit.dayObs,
        midpoint_mjd=visit.startMjd + visit.exposureTime / 2.0 / 86400.0,
        footprint_ra=(),
        footprint_dec=(),
        sources={},
        cutouts=[(c.get("difference"), c.get("science"), c.get("template")) for c in out.cutouts],
    )
    ccd.sources = dia_columns(out, ccd)
    ccd.footprint_ra, ccd.footprint_dec = footprint(out, pre)
    ccd.validate()
    wire = ccd.to_wire()
    summary.update(cpu_split(out, began))
    return {"ok": True, "reason": "", "stages": stages, "summary": summary, "ccd": wire}


class _Began(NamedTuple):
    """Where the child's accounts stood when ``process`` began."""

    cpu_s: float
    faults: int
    gc_s: float
    handoff_s: float  # the hand-off since the previous CCD
    preload_s: float  # the preloads run since the previous CCD (at nextVisit)
    preload_faults: int


def cpu_split(out: CcdOutputs, began: _Began) -> dict[str, float | int]:
    """The CPU split (:data:`CPU_SPLIT`) of the CCD whose ``process`` began at ``began``."""
    cpu, faults = _usage()
    inline_s, inline_faults = _account.take_preloads()  # the CCD was not preloaded
    raw = out.adapter_cpu.get("raw", 0.0)
    outputs = out.adapter_cpu.get("outputs", 0.0)
    pixel = out.cpu_timings.get("total", 0.0)
    return {
        "cpu_preload_s": began.preload_s + inline_s,
        "cpu_handoff_s": began.handoff_s,
        "cpu_raw_s": raw,
        "pixel_cpu_s": pixel,
        "cpu_outputs_s": outputs,
        "cpu_rest_s": max(0.0, cpu - began.cpu_s - inline_s - raw - pixel - outputs),
        "cpu_gc_s": _account.gc_s - began.gc_s,
        "minor_faults": faults - began.faults - inline_faults,
        "preload_minor_faults": began.preload_faults + inline_faults,
    }


def dia_columns(out: CcdOutputs, ccd: CcdResults) -> dict[str, np.ndarray]:
    """The DIASource table as columns, with ids unique across CCDs, runs and releases."""
    table = out.diasources
    n = len(table)
    cols = {name: np.asarray(table[name]) for name in table.dtype.names or ()}
    cols["diaSourceId"] = _ids.dia_source_ids(ccd.visit, ccd.detector, n)
    cols["visit"] = np.full(n, ccd.visit, dtype=np.int64)
    cols["detector"] = np.full(n, ccd.detector, dtype=np.int64)
    cols["midpointMjdTai"] = np.full(n, ccd.midpoint_mjd)
    cols["band"] = np.full(n, ccd.band, dtype=object)
    # The trail is fitted on the same footprint pixels as the PSF.
    cols.setdefault("trailNdata", np.asarray(cols.get("psfNdata", np.zeros(n)), dtype=np.int32))
    cols["timeProcessedMjdTai"] = np.full(n, tai_mjd(tai_now()))
    return cols


def footprint(out: CcdOutputs, pre: Preloaded) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The CCD's corners on the sky, from the fitted WCS."""
    det = pre.camera.detector(pre.detector)
    nx, ny = det.nx, det.ny
    if out.wcs is None:
        raise ValueError("a processed CCD without a WCS")
    wcs = TanSipWcs.from_header(out.wcs)
    x = np.array([0.0, nx - 1.0, nx - 1.0, 0.0])
    y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0])
    ra, dec = wcs.pixel_to_sky(x, y)
    return tuple(float(v) for v in ra), tuple(float(v) for v in dec)


def quality(out: CcdOutputs) -> dict[str, Any]:
    """The data-quality figures of the CCD, named as the outcome records name them."""
    s = out.summary
    return {
        "zeropoint": s.get("zeropoint"),
        "sky_level": s.get("sky_level_electrons"),
        "seeing_arcsec": s.get("psf_fwhm_arcsec"),
        "psf_fwhm_px": s.get("psf_fwhm_pixels"),
        "astrom_rms_mas": s.get("astrometric_scatter_mas"),
        "n_sources": s.get("n_sources"),
    }
