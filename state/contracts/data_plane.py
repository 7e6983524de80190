"""Data-plane payloads: what crosses a process boundary between components (docs/protocol.md).

One model per hand-off, checked once where it enters the component that receives it:

* :class:`RawTransfer` — SummitBuffer → Ingest (``receive_raw``; the bytes sent with it are
  checked by :meth:`RawTransfer.raw_bytes`), answered by :class:`RawReceipt`;
* :class:`CcdVisit` — the visit a CcdProcessor's worker process preloads and processes, and
  :class:`CcdWorkResult` — what the worker answers for one CCD;
* :class:`CcdResultsWire` — CcdProcessor → Association (``associate``), answered by
  :class:`AssociateReply`;
* :class:`AlertHandoff` — Association → alert outbox → AlertPublisher (``publish``).

Unlike the event contracts these carry numpy columns and FITS bytes (they never reach a
client), so columns are checked for shape (one dimension, one length per table), not value by
value. A payload that does not fit raises :class:`~state.contracts.values.ContractError` (an
``InvalidInputError``): the receiver records it against that raw or CCD and goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .base import first_problem
from .events import Stage
from .values import (
    MAX_NAME,
    ContractError,
    Dec,
    Detector,
    Finite,
    Int64,
    Mjd,
    Name,
    NonNegInt,
    Ra,
    Seconds,
    TaiSeconds,
    Text,
)

#: Longest table (DIASources of one CCD, their history, a visit's objects).
MAX_ROWS = 1_000_000
#: Most columns in one table.
MAX_COLUMNS = 512
#: Most vertices of a CCD footprint.
MAX_VERTICES = 64


def _plain_int(value: Any) -> Any:
    """numpy integers (columns' scalars) are integers here; bool stays refused."""
    return int(value) if isinstance(value, np.integer) else value


def _columns(value: dict[str, Any]) -> dict[str, Any]:
    lengths: set[int] = set()
    for name, column in value.items():
        if isinstance(column, np.ndarray):
            if column.ndim != 1:
                raise ValueError(f"column {name!r} has {column.ndim} dimensions, not 1")
        elif not isinstance(column, list | tuple):
            raise ValueError(f"column {name!r} is a {type(column).__name__}, not an array")
        if len(column) > MAX_ROWS:
            raise ValueError(f"column {name!r} has more than {MAX_ROWS} rows")
        lengths.add(len(column))
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: {sorted(lengths)}")
    return value


Id = Annotated[NonNegInt, BeforeValidator(_plain_int)]
DetectorId = Annotated[Detector, BeforeValidator(_plain_int)]
DayObs = Annotated[Int64, BeforeValidator(_plain_int)]
Band = Literal["u", "g", "r", "i", "z", "y"]
#: A name that is also safe as a file name (no separator, no leading dot).
FileName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", strict=True
    ),
]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$", strict=True)]
#: A table as columns: name → a one-dimensional numpy array or list, all of one length.
Columns = Annotated[dict[Name, Any], Field(max_length=MAX_COLUMNS), AfterValidator(_columns)]
Cutout = bytes | None
#: (difference, science, template) FITS bytes per DIASource; a list stands for a tuple.
Triple = Annotated[tuple[Cutout, Cutout, Cutout], Field(strict=False)]
Cutouts = Annotated[list[Triple], Field(max_length=MAX_ROWS)]
Stages = Annotated[dict[Stage, TaiSeconds], Field(max_length=32)]


class DataContract(BaseModel):
    """One data-plane payload: strict types, numpy arrays allowed where a field says so."""

    model_config = ConfigDict(strict=True, extra="allow", arbitrary_types_allowed=True)
    #: The hand-off, as error messages name it.
    door: ClassVar[str] = ""

    @classmethod
    def parse(cls, data: Any) -> Self:
        """The payload as this model; ContractError (naming the first wrong field) otherwise."""
        where = cls.door or cls.__name__
        if not isinstance(data, Mapping):
            raise ContractError(f"{where}: a payload must be a map, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise ContractError(f"{where}: {first_problem(e)}") from e


class RawTransfer(DataContract):
    """What the summit buffer sends with a raw's bytes (``Ingest.rpc_receive_raw``)."""

    door = "receive_raw"
    imageName: FileName
    visit: Id
    detector: DetectorId
    checksum: Sha256
    camera: Name = ""
    byteSize: NonNegInt | None = None
    endReadoutTai: TaiSeconds | None = None

    def raw_bytes(self, data: Any) -> memoryview:
        """The raw's bytes sent with this payload, as one flat byte view: ``bytes`` (or a
        ``bytearray``/``memoryview`` of bytes) or a one-dimensional contiguous uint8 array,
        which is how Ray hands a raw over without copying it out of its object store."""
        if isinstance(data, np.ndarray):
            if data.dtype != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous:
                raise ContractError(
                    f"{self.door}: the raw must be bytes or a flat uint8 array, got an array "
                    f"of {data.dtype} with shape {data.shape}"
                )
            return memoryview(data)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ContractError(
                f"{self.door}: the raw must be bytes or a flat uint8 array, "
                f"got {type(data).__name__}"
            )
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
            raise ContractError(
                f"{self.door}: the raw must be bytes or a flat uint8 array, got a "
                f"{view.ndim}-dimensional view of {view.format!r}"
            )
        return view


class RawReceipt(DataContract):
    """Ingest's answer: the checksum it verified, and whether it had the raw already."""

    door = "receive_raw reply"
    checksum: Sha256
    duplicate: bool


class CcdVisit(DataContract):
    """The visit as ``nextVisit`` (or the registry) describes it, as a CCD's work needs it."""

    door = "ccd work"
    visit: Id
    camera: Name
    band: Band
    ra: Ra
    dec: Dec
    fieldId: Int64
    startMjd: Mjd
    dayObs: DayObs
    exposureTime: Seconds


class CcdWorkResult(DataContract):
    """The worker's answer for one CCD; ``ccd`` (a :class:`CcdResultsWire`) when ``ok``."""

    door = "ccd work result"
    ok: bool
    reason: Text
    stages: Stages
    summary: Annotated[dict[Name, float | int | None], Field(max_length=64)]
    ccd: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _ccd_when_ok(self) -> Self:
        if self.ok and self.ccd is None:
            raise ValueError("a CCD processed ok carries its results (ccd)")
        return self


Footprint = Annotated[
    tuple[Finite, ...], Field(min_length=3, max_length=MAX_VERTICES, strict=False)
]


class CcdResultsWire(DataContract):
    """One CCD's results for Association (``base.prompt.requests.CcdResults`` on the wire)."""

    model_config = ConfigDict(extra="forbid")
    door = "associate"
    visit: Id
    detector: DetectorId
    band: Band
    day_obs: DayObs
    midpoint_mjd: Mjd
    footprint_ra: Footprint
    footprint_dec: Footprint
    sources: Columns
    cutouts: Cutouts
    forced_sources: Columns | None = None
    stages: Stages = {}
    attempt: Annotated[int, Field(ge=1, le=1000, strict=True)] = 1


class AssociateReply(DataContract):
    """Association's answer for one CCD (a repeat says ``duplicate`` and stores nothing)."""

    door = "associate reply"
    stored: bool
    duplicate: bool
    nDiaSources: NonNegInt = 0
    stages: Stages = {}


class AlertHandoff(DataContract):
    """One stored CCD's alerts to publish: the alerted DIASources and what alerts carry."""

    door = "alert hand-off"
    visit: Id
    detector: DetectorId
    dayObs: DayObs
    band: Band | None = None
    sources: Columns
    objects: Columns | None = None
    history: Columns | None = None
    forcedHistory: Columns | None = None
    ssSources: Columns | None = None
    cutouts: Cutouts = []
    stages: Stages = {}
    notAlerted: NonNegInt = 0

    @model_validator(mode="after")
    def _alertable(self) -> Self:
        missing = [c for c in ("diaSourceId", "ra", "dec") if c not in self.sources]
        if missing:
            raise ValueError(f"the DIASources lack columns {missing}")
        n = len(self.sources["diaSourceId"])
        if self.cutouts and len(self.cutouts) != n:
            raise ValueError(f"{len(self.cutouts)} cutouts for {n} DIASources")
        return self


DATA_CONTRACTS: tuple[type[DataContract], ...] = (
    RawTransfer,
    RawReceipt,
    CcdVisit,
    CcdWorkResult,
    CcdResultsWire,
    AssociateReply,
    AlertHandoff,
)
