"""Identifiers unique across runs and data releases (DMS-REQ-0292), packed into a positive int64.

Layout, most significant first (63 bits)::

    release (5) | kind (1) | visit (32) | detector (8) | index (17)

``release`` numbers the processing campaign (0 = prompt processing, 1.. = data releases or
reprocessing runs), so a reprocessing of the same visit can never reuse an id; ``kind``
separates DiaSource from DiaForcedSource ids; ``index`` counts rows within one
(visit, detector). Rubin-style visit numbers (``dayObs * 100000 + seqNum``) are folded into the
32 visit bits by :func:`compact_visit`. A new DiaObject takes the id of the DiaSource that
founded it, as Rubin does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from state.errors import InvalidInputError

RELEASE_BITS, KIND_BITS, VISIT_BITS, DETECTOR_BITS, INDEX_BITS = 5, 1, 32, 8, 17
KIND_DIA_SOURCE, KIND_FORCED_SOURCE = 0, 1


#: Rubin numbers exposures ``dayObs * 100000 + seqNum``; ids pack the day as days since this.
_DAY_ZERO = date(2020, 1, 1)


def compact_visit(visit: int) -> int:
    """A Rubin-style visit number folded into 32 bits: days since 2020 * 100000 + seqNum.

    Visit numbers that already fit (small test numbers) are kept as they are.
    """
    if visit < 1 << VISIT_BITS:
        return visit
    day_obs, seq = divmod(visit, 100000)
    try:
        day = date(day_obs // 10000, day_obs // 100 % 100, day_obs % 100)
    except ValueError as e:
        raise InvalidInputError(f"visit {visit} is not dayObs * 100000 + seqNum") from e
    return (day - _DAY_ZERO).days * 100000 + seq


@dataclass(frozen=True)
class PackedId:
    release: int
    kind: int
    visit: int
    detector: int
    index: int


@dataclass(frozen=True)
class IdPacker:
    """Packs (release, kind, visit, detector, index) into int64 ids for one campaign."""

    release: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.release < 1 << RELEASE_BITS:
            raise InvalidInputError(f"release {self.release} outside 0..{(1 << RELEASE_BITS) - 1}")

    def ids(self, visit: int, detector: int, n: int, kind: int = KIND_DIA_SOURCE) -> np.ndarray:
        """``n`` consecutive ids for one (visit, detector)."""
        visit = compact_visit(visit)
        if not 0 <= visit < 1 << VISIT_BITS:
            raise InvalidInputError(f"visit {visit} does not fit in {VISIT_BITS} bits")
        if not 0 <= detector < 1 << DETECTOR_BITS:
            raise InvalidInputError(f"detector {detector} does not fit in {DETECTOR_BITS} bits")
        if not 0 <= n <= 1 << INDEX_BITS:
            raise InvalidInputError(f"{n} rows exceed the {1 << INDEX_BITS} ids of one CCD")
        base = (
            ((self.release << KIND_BITS | kind) << VISIT_BITS | visit) << DETECTOR_BITS | detector
        ) << INDEX_BITS
        return np.int64(base) + np.arange(n, dtype=np.int64)

    def dia_source_ids(self, visit: int, detector: int, n: int) -> np.ndarray:
        return self.ids(visit, detector, n, KIND_DIA_SOURCE)

    def forced_source_ids(self, visit: int, detector: int, n: int) -> np.ndarray:
        return self.ids(visit, detector, n, KIND_FORCED_SOURCE)

    @staticmethod
    def unpack(value: int) -> PackedId:
        v = int(value)
        index = v & ((1 << INDEX_BITS) - 1)
        v >>= INDEX_BITS
        detector = v & ((1 << DETECTOR_BITS) - 1)
        v >>= DETECTOR_BITS
        visit = v & ((1 << VISIT_BITS) - 1)
        v >>= VISIT_BITS
        kind = v & 1
        return PackedId(v >> KIND_BITS, kind, visit, detector, index)
