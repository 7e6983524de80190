"""What a reprocessing does: the CCD units of some nights, their sky regions, its config hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from algorithms.pipeline import PipelineConfig
from base.prompt.registry_inputs import resolve_inputs
from base.registry.repository import Repository
from base.reprocess.work import CcdUnit
from state.errors import InvalidInputError


@dataclass(frozen=True)
class AssociationParams:
    """The association settings of a run (the prompt Association's defaults)."""

    radius_arcsec: float = 1.0
    #: The margin: each CCD is associated against the APDB in its footprint grown by this.
    pad_arcsec: float = 10.0
    history_days: float = 365.0


async def ccd_units(repo: Repository, first: int, last: int | None = None) -> list[CcdUnit]:
    """Every registered raw of the nights ``first..last`` (dayObs), in time order, with the
    inputs the registry holds for it (what it lacks is left None, and fails the CCD)."""
    last = first if last is None else last
    if last < first:
        raise InvalidInputError(f"night range {first}..{last} is empty")
    exposures: dict[int, dict[str, object] | None] = {}
    units = []
    for raw in await repo.raws():
        if raw.visit not in exposures:
            e = await repo.get_exposure(raw.visit)
            exposures[raw.visit] = None
            if e is not None and e.day_obs is not None and first <= e.day_obs <= last:
                missing = [
                    k
                    for k in ("band", "ra", "dec", "mjd_start", "exposure_time")
                    if getattr(e, k) is None
                ]
                if missing:
                    raise InvalidInputError(f"exposure {e.visit} lacks {missing} in the registry")
                exposures[raw.visit] = {
                    "visit": e.visit,
                    "camera": e.camera,
                    "band": e.band,
                    "ra": e.ra,
                    "dec": e.dec,
                    "fieldId": e.field_id if e.field_id is not None else 0,
                    "startMjd": e.mjd_start,
                    "dayObs": e.day_obs,
                    "exposureTime": e.exposure_time,
                    "imageName": e.image_name,
                }
        info = exposures[raw.visit]
        if info is not None:
            inputs = await resolve_inputs(repo, info, raw.detector, raw=raw.path)
            units.append(CcdUnit(raw.visit, raw.detector, raw.path, dict(info), inputs))
    return sorted(units, key=lambda c: (c.mjd, c.visit, c.detector))


def inputs_digest(units: Iterable[CcdUnit]) -> str:
    """What the units read, by content: the registered checksum of every product of each
    (a product re-pointed at an identical file changes nothing; a changed one changes it)."""
    doc = {u.key: sorted(c for _, c in u.inputs.checksums) for u in units}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def config_hash(release_id: int, params: AssociationParams, extra: dict[str, object]) -> str:
    """What decides the outputs: pipeline and association settings, release id, inputs."""
    doc = {
        "pipeline": repr(PipelineConfig()),
        "association": asdict(params),
        "release": release_id,
        **extra,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
