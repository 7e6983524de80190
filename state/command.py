"""A command as it reaches a component, and the validation of its parameters."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from state.contracts import ContractError, check_value
from state.errors import CommandRejected, InvalidInputError

#: JSON/msgpack value types a command parameter may declare.
_PARAM_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    list: (list, tuple),
    dict: (dict,),
}


@dataclass(frozen=True, slots=True)
class Command:
    component: str
    name: str
    identity: str
    seq: int
    params: dict[str, Any] = field(default_factory=dict)
    #: Seconds the caller will wait for the final ack; None for the component's default.
    timeout: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "name": self.name,
            "identity": self.identity,
            "seq": self.seq,
            "params": self.params,
            "timeout": self.timeout,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Command:
        try:
            params = wire.get("params") or {}
            if not isinstance(params, dict):
                raise InvalidInputError("'params' must be a mapping of parameter name to value")
            timeout = wire.get("timeout")
            return cls(
                component=_require_str(wire, "component"),
                name=_require_str(wire, "name"),
                identity=str(wire.get("identity", "")),
                seq=int(wire.get("seq", 0)),
                params=params,
                timeout=None if timeout is None else float(timeout),
            )
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"malformed command: {e}") from e


def _require_str(wire: dict[str, Any], key: str) -> str:
    value = wire.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"command needs a non-empty string {key!r}")
    return value


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    accepts: tuple[type, ...]
    type_name: str
    required: bool


def param_specs(method: Callable[..., Any]) -> tuple[ParamSpec, ...]:
    """The parameters a ``do_<command>`` method takes: keyword-only, typed with plain types."""
    hints = typing.get_type_hints(method)
    specs = []
    for p in inspect.signature(method).parameters.values():
        if p.name == "self":
            continue
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{method.__qualname__}: command parameters must be keyword-only")
        hint = hints.get(p.name, Any)
        accepts = _PARAM_TYPES.get(typing.get_origin(hint) or hint)
        if accepts is None:
            raise TypeError(f"{method.__qualname__}: unsupported parameter type {hint!r}")
        specs.append(
            ParamSpec(p.name, accepts, hint.__name__, p.default is inspect.Parameter.empty)
        )
    return tuple(specs)


def validate_params(command: str, specs: tuple[ParamSpec, ...], params: dict[str, Any]) -> None:
    """Raise CommandRejected naming the first wrong, unknown or missing parameter."""
    known = {s.name: s for s in specs}
    expected = ", ".join(f"{s.name}: {s.type_name}" for s in specs) or "none"
    for name, value in params.items():
        spec = known.get(name)
        if spec is None:
            raise CommandRejected(
                f"unknown parameter {name!r} for {command}; expected parameters: {expected}"
            )
        wrong_bool = isinstance(value, bool) and bool not in spec.accepts
        if wrong_bool or not isinstance(value, spec.accepts):
            raise CommandRejected(
                f"parameter {name!r} of {command} must be {spec.type_name}, "
                f"got {type(value).__name__} {repr(value)[:80]}"
            )
        try:
            check_value(value, f"parameter {name!r} of {command}")
        except ContractError as e:
            raise CommandRejected(str(e)) from e
    for spec in specs:
        if spec.required and spec.name not in params:
            raise CommandRejected(f"missing parameter {spec.name!r} for {command}")
