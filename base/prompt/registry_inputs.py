"""Look up the inputs of one CCD in the registry, for a processor without a night directory.

The answer is plain data (:class:`base.ccd_inputs.ResolvedInputs`) that pickles to the
processor's worker process (or a batch worker), with the checksum the registry recorded for
each product, which the worker verifies when it reads it. An input the registry lacks is
left None: the adapter flags it, nothing here raises for it. One that registration refused is
passed with its reason, which the worker gives as the CCD's (``calibs_unreadable``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from base.ccd_inputs import CalibPaths, ResolvedInputs
from base.registry.repository import Repository
from state.errors import InvalidInputError

#: The calibration types a CCD needs: the fields of ``CalibPaths``.
_CALIB_FIELDS = tuple(f.name for f in fields(CalibPaths))


async def resolve_inputs(
    repo: Repository, visit_info: Mapping[str, Any], detector: int, *, raw: str | None = None
) -> ResolvedInputs:
    """Calibrations, template and reference catalogue of (visit, detector) from ``repo``.

    ``visit_info`` is a ``nextVisit`` payload (``visit``, ``camera``, ``band``, ``startMjd``,
    ``fieldId`` or ``ra``/``dec``); a malformed one raises ``InvalidInputError``.
    """
    try:
        visit, camera = int(visit_info["visit"]), str(visit_info["camera"])
        band, mjd = str(visit_info["band"]), float(visit_info["startMjd"])
        field = visit_info.get("fieldId")
        field_id = None if field is None else int(field)
        ra = dec = None
        if field_id is None:
            ra, dec = float(visit_info["ra"]), float(visit_info["dec"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInputError(f"bad visit description for the registry lookup: {e}") from e
    calibs = await repo.get_calibs(detector, band, mjd, camera=camera)
    templates = await repo.get_template(
        band, field_id=field_id, ra=ra, dec=dec, detector=detector, camera=camera
    )
    refcat = await repo.get_refcat(camera)
    products = [calibs[k] for k in _CALIB_FIELDS if k in calibs]
    products += templates[:1] + ([] if refcat is None else [refcat])
    return ResolvedInputs(
        visit=visit,
        detector=detector,
        raw=None if raw is None else Path(raw),
        calibs=CalibPaths(
            **{k: Path(calibs[k].path) for k in _CALIB_FIELDS if k in calibs}  # type: ignore[arg-type]
        ),
        template=Path(templates[0].path) if templates else None,
        refcat=None if refcat is None else Path(refcat.path),
        checksums=tuple((p.path, p.checksum) for p in products if p.refused is None),
        refused=tuple((p.path, p.refused) for p in products if p.refused is not None),
    )
