"""Bounded value types every contract is built from, and the check every payload passes.

Whatever a client sends must survive both wire encodings and every consumer: integers fit in
64 bits (msgpack's limit), floats are finite (JSON has no NaN or Infinity), strings are valid
UTF-8 (no lone surrogates) and bounded, and nesting is shallow.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from state.errors import InvalidInputError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Deepest nesting of maps and lists in any payload or frame.
MAX_DEPTH = 32
#: Longest string anywhere in a payload.
MAX_STRING = 1 << 16
#: Longest name (component, topic, command, image name, identifier).
MAX_NAME = 128


class ContractError(InvalidInputError):
    """A payload that does not match its contract (answered ``bad_field`` / HTTP 400)."""


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid UTF-8 (lone surrogate at {e.start})") from e
    return text


Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX, strict=True)]
NonNegInt = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]
#: A finite float (an integer is accepted); NaN and ±Infinity are refused.
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Text = Annotated[str, StringConstraints(max_length=MAX_STRING, strict=True), AfterValidator(_utf8)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME, strict=True), AfterValidator(_utf8)]
Degrees = Annotated[float, Field(ge=-360.0, le=720.0, allow_inf_nan=False, strict=True)]
Ra = Annotated[float, Field(ge=0.0, le=360.0, allow_inf_nan=False, strict=True)]
Dec = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False, strict=True)]
#: A TAI MJD from 1858 to the year 2132 (enough for any simulated night).
Mjd = Annotated[float, Field(ge=0.0, le=100_000.0, allow_inf_nan=False, strict=True)]
#: TAI seconds since the Unix epoch, years 1970 to 2300.
TaiSeconds = Annotated[float, Field(ge=0.0, le=1.05e10, allow_inf_nan=False, strict=True)]
Seconds = Annotated[float, Field(ge=0.0, le=1e7, allow_inf_nan=False, strict=True)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)]
Detector = Annotated[int, Field(ge=0, le=10_000, strict=True)]


def check_value(value: Any, where: str = "payload") -> None:
    """Raise ContractError unless ``value`` is a safe wire value (see the module docstring).

    Iterative, so a hostile nesting cannot exhaust the interpreter's stack; the path to a bad
    value is only spelled out when there is one.
    """
    stack: list[tuple[Any, int, _Trail]] = [(value, 0, None)]
    while stack:
        item, depth, trail = stack.pop()
        if item is None or isinstance(item, bool | bytes):
            continue
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise ContractError(f"{_path(where, trail)}: integer out of the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ContractError(f"{_path(where, trail)}: {item} is not a finite number")
        elif isinstance(item, str):
            _check_text(item, where, trail)
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ContractError(f"{_path(where, trail)}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise ContractError(f"{_path(where, trail)}: map keys must be strings")
                    _check_text(key, where, (trail, "<key>"))
                    stack.append((sub, depth + 1, (trail, key)))
            else:
                stack.extend((sub, depth + 1, (trail, i)) for i, sub in enumerate(item))
        else:
            raise ContractError(f"{_path(where, trail)}: {type(item).__name__} is not a wire value")


#: The way to a value inside a payload: (the parent's trail, key or index), None at the top.
_Trail = tuple[Any, str | int] | None


def _path(where: str, trail: _Trail) -> str:
    parts: list[str] = []
    while trail is not None:
        trail, step = trail
        parts.append(f"[{step}]" if isinstance(step, int) else f".{str(step)[:MAX_NAME]}")
    path = where + "".join(reversed(parts))
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(text: str, where: str, trail: _Trail) -> None:
    if len(text) > MAX_STRING:
        raise ContractError(f"{_path(where, trail)}: string longer than {MAX_STRING} characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ContractError(
                f"{_path(where, trail)}: string is not valid UTF-8 (lone surrogate)"
            ) from e


def nesting_depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests maps and lists more than ``limit`` deep (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in item)
    return False
