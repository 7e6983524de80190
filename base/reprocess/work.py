"""The per-CCD work of a reprocessing, run in a worker (a Ray task or a local thread).

It is the prompt path's own code (:func:`base.prompt.ccd_work.process`, the same adapter and
algorithms) on the inputs the registry gave for the unit (``CcdUnit.inputs``, each product
checked against its registered checksum as it is read); only the identifiers are re-minted
for the release (``IdPacker(release=N)``), so they can never collide with prompt processing
(release 0) or another release. A data
release publishes no alerts, so its cutouts are dropped.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from base.apdb.ids import IdPacker
from base.ccd_inputs import ResolvedInputs
from base.prompt import ccd_work
from base.prompt.requests import CcdResults
from state.errors import DmcsError, InvalidInputError

#: Columns that differ between two runs of the same CCD by design (left out of checksums).
VOLATILE = ("timeProcessedMjdTai",)


@dataclass(frozen=True)
class CcdUnit:
    """One (visit, detector) to reprocess: its raw, its ``nextVisit``-like description and
    the calibrations, template and reference catalogue the registry holds for it."""

    visit: int
    detector: int
    raw_path: str
    visit_info: dict[str, Any]
    inputs: ResolvedInputs

    @property
    def key(self) -> str:
        return f"ccd:{self.visit}/{self.detector}"

    @property
    def mjd(self) -> float:
        return float(self.visit_info["startMjd"])


def process_ccd(unit: CcdUnit, release: int) -> dict[str, Any]:
    """``{"ok", "reason", "ccd"}``; ``ccd`` (a ``CcdResults`` wire dict) when ok.

    Bad input (a malformed exposure description, a registered product missing or corrupt,
    results that fail validation) comes back as ``ok: False`` with its reason, never as an
    exception: it is not worth a retry.
    """
    try:
        result = ccd_work.process(unit.inputs, unit.visit_info, unit.detector, unit.raw_path)
    except (DmcsError, ValueError, KeyError, TypeError) as e:
        return {"ok": False, "reason": f"bad_input:{type(e).__name__}:{e}"}
    if not result["ok"]:
        return {"ok": False, "reason": result["reason"]}
    ccd = dict(result["ccd"])
    if release:
        sources = dict(ccd["sources"])
        n = len(sources["diaSourceId"])
        sources["diaSourceId"] = IdPacker(release=release).dia_source_ids(
            unit.visit, unit.detector, n
        )
        ccd["sources"] = sources
        ccd["cutouts"] = []
    return {"ok": True, "reason": "", "ccd": ccd}


def columns_checksum(cols: dict[str, np.ndarray]) -> str:
    """sha256 over the columns (sorted by name), leaving out the :data:`VOLATILE` ones."""
    h = hashlib.sha256()
    for name in sorted(cols):
        if name in VOLATILE:
            continue
        a = np.asarray(cols[name])
        h.update(name.encode())
        h.update(a.astype(str).tobytes() if a.dtype == object else np.ascontiguousarray(a).data)
    return h.hexdigest()


def pack(ccd: dict[str, Any]) -> tuple[bytes, str]:
    """A CCD's results (cutouts aside) as npz bytes plus a JSON header; and their checksum."""
    sources = {k: np.asarray(v) for k, v in ccd["sources"].items()}
    arrays = {f"s_{k}": (v.astype(str) if v.dtype == object else v) for k, v in sources.items()}
    meta = {k: ccd[k] for k in ("visit", "detector", "band", "day_obs", "midpoint_mjd")}
    meta["footprint_ra"], meta["footprint_dec"] = (
        list(ccd["footprint_ra"]),
        list(ccd["footprint_dec"]),
    )
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue(), columns_checksum(sources)


def unpack(payload: bytes) -> CcdResults:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            sources = {k[2:]: z[k] for k in z.files if k.startswith("s_")}
    except (OSError, ValueError, KeyError) as e:
        raise InvalidInputError(f"unreadable stored CCD results: {e}") from e
    if "band" in sources:
        sources["band"] = sources["band"].astype(object)
    results = CcdResults(
        visit=int(meta["visit"]),
        detector=int(meta["detector"]),
        band=str(meta["band"]),
        day_obs=int(meta["day_obs"]),
        midpoint_mjd=float(meta["midpoint_mjd"]),
        footprint_ra=tuple(meta["footprint_ra"]),
        footprint_dec=tuple(meta["footprint_dec"]),
        sources=sources,
        cutouts=[],
    )
    results.validate()
    return results
