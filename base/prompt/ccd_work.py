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
"""

from __future__ import annotations

import fcntl
import tempfile
import time
from collections import OrderedDict
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

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
from base.prompt.requests import CcdResults
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

_preloaded: OrderedDict[tuple[int, int], tuple[Preloaded, int]] = OrderedDict()
_ids = IdPacker(release=0)
_caches: dict[tuple[str, int], InputCache] = {}

#: A cache's directory and its bound in bytes, as the processor hands them over.
CacheSpec = tuple[str, int]


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
    pre = _adapter(source, cache).preload(visit_info, detector)
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
    visit = CcdVisit.parse(visit_info)
    adapter = _adapter(source, cache)
    key = (visit.visit, detector)
    kept = _preloaded.pop(key, None)
    pre = kept[0] if kept is not None else adapter.preload(visit_info, detector)
    registered = source.raw_checksum if source.raw == Path(raw_path) else None
    out = adapter.process(raw_path, pre, registered or None)
    stages = {"preloadReady": pre.preload_tai, **out.stages}
    summary = quality(out)
    if not out.ok:
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
    return {"ok": True, "reason": "", "stages": stages, "summary": summary, "ccd": ccd.to_wire()}


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
        "pixel_cpu_s": out.cpu_timings.get("total"),  # run_ccd's own CPU timer
    }
