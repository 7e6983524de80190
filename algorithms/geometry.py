"""Amplifier geometry from the standard per-amp FITS keywords (DATASEC, BIASSEC, DETSEC...)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_SECTION = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


@dataclass(frozen=True)
class Section:
    """A rectangle as 0-based half-open numpy slices, plus whether each axis runs backwards.

    IRAF sections are 1-based and inclusive; ``[x1:x2,y1:y2]`` with ``x1 > x2`` means the
    axis is reversed (used by DETSEC for amplifiers read out in the other direction).
    """

    x0: int
    x1: int
    y0: int
    y1: int
    flip_x: bool = False
    flip_y: bool = False

    @property
    def nx(self) -> int:
        return self.x1 - self.x0

    @property
    def ny(self) -> int:
        return self.y1 - self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def to_iraf(self) -> str:
        xa, xb = (self.x1, self.x0 + 1) if self.flip_x else (self.x0 + 1, self.x1)
        ya, yb = (self.y1, self.y0 + 1) if self.flip_y else (self.y0 + 1, self.y1)
        return f"[{xa}:{xb},{ya}:{yb}]"


def parse_iraf_section(text: str) -> Section:
    """Parse ``"[x1:x2,y1:y2]"`` (1-based, inclusive, reversed ranges allowed)."""
    match = _SECTION.match(text)
    if match is None:
        raise ValueError(f"not an IRAF section: {text!r}")
    xa, xb, ya, yb = (int(v) for v in match.groups())
    if min(xa, xb, ya, yb) < 1:
        raise ValueError(f"IRAF sections are 1-based: {text!r}")
    return Section(
        x0=min(xa, xb) - 1,
        x1=max(xa, xb),
        y0=min(ya, yb) - 1,
        y1=max(ya, yb),
        flip_x=xa > xb,
        flip_y=ya > yb,
    )


@dataclass(frozen=True)
class AmpGeometry:
    """One amplifier: where its pixels are in its raw array and in the assembled CCD."""

    name: str
    data: Section
    serial_overscan: Section
    parallel_overscan: Section | None
    detector: Section
    gain: float
    read_noise: float
    saturation: float

    def __post_init__(self) -> None:
        if (self.data.nx, self.data.ny) != (self.detector.nx, self.detector.ny):
            raise ValueError(f"amp {self.name}: DATASEC and DETSEC sizes differ")
        if self.gain <= 0 or self.read_noise < 0 or self.saturation <= 0:
            raise ValueError(f"amp {self.name}: gain/read noise/saturation out of range")
        if self.serial_overscan.ny != self.data.ny:
            raise ValueError(f"amp {self.name}: BIASSEC must span the DATASEC rows")

    @classmethod
    def from_header(cls, header: Mapping[str, object], name: str | None = None) -> AmpGeometry:
        """Build from a per-amp header (``DATASEC``, ``BIASSEC``, ``DETSEC``, ...).

        The parallel overscan is read from ``PARSEC`` (or ``POVERSEC``) when present.
        """
        par = header.get("PARSEC", header.get("POVERSEC"))
        return cls(
            name=str(name if name is not None else header.get("EXTNAME", header.get("AMPNAME"))),
            data=parse_iraf_section(str(header["DATASEC"])),
            serial_overscan=parse_iraf_section(str(header["BIASSEC"])),
            parallel_overscan=parse_iraf_section(str(par)) if par else None,
            detector=parse_iraf_section(str(header["DETSEC"])),
            gain=float(header["GAIN"]),  # type: ignore[arg-type]
            read_noise=float(header["RDNOISE"]),  # type: ignore[arg-type]
            saturation=float(header["SATURATE"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class CcdGeometry:
    """All amplifiers of one CCD; the assembled image is ``ny`` × ``nx``."""

    amps: tuple[AmpGeometry, ...]
    nx: int
    ny: int

    def __post_init__(self) -> None:
        if not self.amps:
            raise ValueError("a CCD needs at least one amplifier")
        covered = sum(a.detector.nx * a.detector.ny for a in self.amps)
        if covered != self.nx * self.ny:
            raise ValueError("amplifier DETSECs do not tile the CCD")
        for a in self.amps:
            if a.detector.x1 > self.nx or a.detector.y1 > self.ny:
                raise ValueError(f"amp {a.name}: DETSEC outside the CCD")

    @classmethod
    def from_amps(cls, amps: Sequence[AmpGeometry]) -> CcdGeometry:
        nx = max(a.detector.x1 for a in amps)
        ny = max(a.detector.y1 for a in amps)
        return cls(amps=tuple(amps), nx=nx, ny=ny)
