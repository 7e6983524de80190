"""The hand-offs between prompt-processing components, validated where they arrive.

A CCD's results travel as one plain dict (cheap to send through Ray): DIASource columns as
numpy arrays keyed by Rubin's DiaSource names, cutout triples as FITS bytes, the CCD
footprint, and the stage times so far. Its types and bounds are
:class:`state.contracts.data_plane.CcdResultsWire`; :meth:`CcdResults.validate` adds what
relates the fields (the columns a DIASource needs, finite positions, unique ids). Validation
here is what puts Association in FAULT on bad input instead of writing garbage to the APDB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.association import Columns
from state.contracts.data_plane import CcdResultsWire
from state.errors import InvalidInputError
from state.events import PROMPT_STAGES

REQUIRED_SOURCE_COLUMNS = ("diaSourceId", "ra", "dec", "midpointMjdTai", "psfFlux", "psfFluxErr")

STAGES = PROMPT_STAGES


@dataclass
class CcdResults:
    visit: int
    detector: int
    band: str
    day_obs: int
    midpoint_mjd: float
    footprint_ra: tuple[float, ...]
    footprint_dec: tuple[float, ...]
    sources: Columns
    cutouts: list[tuple[bytes | None, bytes | None, bytes | None]]
    forced_sources: Columns | None = None
    stages: dict[str, float] = field(default_factory=dict)
    attempt: int = 1

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> CcdResults:
        """The CCD results of a wire that fits :class:`CcdResultsWire` and :meth:`validate`."""
        CcdResultsWire.parse(wire)
        results = cls(**wire)
        results.validate()
        return results

    def validate(self) -> None:
        where = f"visit {self.visit} detector {self.detector}"
        missing = [c for c in REQUIRED_SOURCE_COLUMNS if c not in self.sources]
        if missing:
            raise InvalidInputError(f"{where}: DIASources lack columns {missing}")
        n = len(self.sources["ra"])
        lengths = {k: len(v) for k, v in self.sources.items()}
        if any(length != n for length in lengths.values()):
            raise InvalidInputError(f"{where}: DIASource columns differ in length: {lengths}")
        for name in ("ra", "dec", "midpointMjdTai"):
            values = np.asarray(self.sources[name], dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise InvalidInputError(f"{where}: non-finite {name} in the DIASources")
        dec = np.asarray(self.sources["dec"], dtype=np.float64)
        if n and (dec.min() < -90 or dec.max() > 90):
            raise InvalidInputError(f"{where}: declination outside [-90, 90]")
        if len(np.unique(np.asarray(self.sources["diaSourceId"]))) != n:
            raise InvalidInputError(f"{where}: duplicate diaSourceId in one CCD")
        if len(self.cutouts) not in (0, n):
            raise InvalidInputError(f"{where}: {len(self.cutouts)} cutouts for {n} DIASources")
        if len(self.footprint_ra) < 3 or len(self.footprint_ra) != len(self.footprint_dec):
            raise InvalidInputError(f"{where}: the footprint needs >= 3 (ra, dec) vertices")
        if not all(math.isfinite(v) for v in (*self.footprint_ra, *self.footprint_dec)):
            raise InvalidInputError(f"{where}: non-finite footprint")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise InvalidInputError(f"{where}: unknown stages {sorted(unknown)}")
