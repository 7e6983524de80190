"""The dmcs wire protocol, version 1 (documented with examples in docs/protocol.md).

Every frame is a map carrying ``"v": 1`` and an ``"op"``. A WebSocket connection speaks
msgpack in binary frames (subprotocol ``dmcs.v1.msgpack``, the default) or JSON in text
frames (subprotocol ``dmcs.v1.json``, for browsers).
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Any

import msgpack

from state.contracts import ContractError, check_value, nesting_depth_exceeds
from state.contracts.values import INT64_MAX, INT64_MIN, MAX_DEPTH, MAX_NAME
from state.errors import InvalidInputError

PROTOCOL_VERSION = 1
SUBPROTOCOL_MSGPACK = "dmcs.v1.msgpack"
SUBPROTOCOL_JSON = "dmcs.v1.json"
SUBPROTOCOLS = (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)

Frame = dict[str, Any]
#: Most component or topic names in one subscription.
MAX_FILTER_NAMES = 256
#: Longest command timeout a client may ask for, in seconds.
MAX_TIMEOUT = 3600.0


class Op(StrEnum):
    # client → gateway
    COMMAND = "command"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    TELEMETRY = "telemetry"
    CAMERA = "camera"
    PING = "ping"
    # gateway → client
    HELLO = "hello"
    ACK = "ack"
    EVENT = "event"
    SUBSCRIBED = "subscribed"
    DROPPED = "dropped"
    PONG = "pong"
    ERROR = "error"


class ErrorCode(StrEnum):
    BAD_FRAME = "bad_frame"
    TOO_LARGE = "too_large"
    BAD_VERSION = "bad_version"
    UNKNOWN_OP = "unknown_op"
    BAD_FIELD = "bad_field"
    NOT_PERMITTED = "not_permitted"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_COMPONENT = "unknown_component"
    OVERLOADED = "overloaded"


#: Required fields and their types, per client operation.
_CLIENT_FIELDS: dict[Op, dict[str, type | tuple[type, ...]]] = {
    Op.COMMAND: {"id": int, "component": str, "name": str},
    Op.SUBSCRIBE: {"id": int},
    Op.UNSUBSCRIBE: {"id": int},
    Op.TELEMETRY: {"topic": str, "data": dict},
    Op.CAMERA: {"name": str, "data": dict},
    Op.PING: {"id": int},
}
_OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "params": dict,
    "timeout": (int, float),
    "components": (list, type(None)),
    "topics": (list, type(None)),
}


class Codec:
    """Encodes and decodes frames in one of the two formats."""

    def __init__(self, subprotocol: str | None) -> None:
        self.binary = subprotocol != SUBPROTOCOL_JSON

    def encode(self, frame: Frame) -> bytes | str:
        if self.binary:
            return msgpack.packb(frame, use_bin_type=True)
        return dumps_json(frame)

    def decode(self, payload: bytes | str) -> Frame:
        kind = "msgpack" if isinstance(payload, bytes) else "JSON"
        try:
            if isinstance(payload, bytes):
                frame = msgpack.unpackb(payload, raw=False, strict_map_key=True)
            else:
                frame = json.loads(payload)
        except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as e:
            raise InvalidInputError(f"malformed {kind} frame: {_short(e)}") from e
        if nesting_depth_exceeds(frame):
            raise InvalidInputError(f"malformed {kind} frame: nested over {MAX_DEPTH} levels")
        return frame


def loads_json(text: str | bytes) -> Any:
    """JSON from a client: InvalidInputError for bad syntax, huge integers or deep nesting."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidInputError(f"not valid JSON: {_short(e)}") from e
    if nesting_depth_exceeds(value):
        raise InvalidInputError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def dumps_json(value: Any) -> str:
    """Compact JSON that browsers can parse: a NaN or Infinity that slipped through is null."""
    try:
        return json.dumps(value, separators=(",", ":"), default=_json_default, allow_nan=False)
    except ValueError:
        return json.dumps(
            _finite(value), separators=(",", ":"), default=_json_default, allow_nan=False
        )


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _short(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error)[:200]


def request_id(frame: Any) -> int | None:
    """The ``id`` of a client frame, to echo in an error, only when it is a valid one."""
    value = frame.get("id") if isinstance(frame, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def validate_client_frame(frame: Any) -> Op:
    """Check a decoded client frame; raise InvalidInputError saying what is wrong."""
    if not isinstance(frame, dict):
        raise InvalidInputError(f"a frame must be a map, got {type(frame).__name__}")
    version = frame.get("v")
    if version != PROTOCOL_VERSION:
        raise _FieldError(
            ErrorCode.BAD_VERSION,
            f"unsupported protocol version {version!r}; this gateway speaks v{PROTOCOL_VERSION}",
        )
    try:
        op = Op(frame.get("op"))
    except ValueError as e:
        ops = ", ".join(sorted(_CLIENT_FIELDS))
        raise _FieldError(
            ErrorCode.UNKNOWN_OP, f"unknown op {frame.get('op')!r}; expected one of {ops}"
        ) from e
    fields = _CLIENT_FIELDS.get(op)
    if fields is None:
        raise _FieldError(ErrorCode.UNKNOWN_OP, f"op {op.value!r} is not sent by clients")
    for name, kind in fields.items():
        value = frame.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _FieldError(
                ErrorCode.BAD_FIELD, f"{op.value}: field {name!r} must be {_names(kind)}"
            )
    for name, kind in _OPTIONAL_FIELDS.items():
        if name in frame and not isinstance(frame[name], kind):
            raise _FieldError(
                ErrorCode.BAD_FIELD, f"{op.value}: field {name!r} must be {_names(kind)}"
            )
    _check_bounds(op, frame)
    return op


def _check_bounds(op: Op, frame: Frame) -> None:
    """Every value a wire value (64-bit ints, finite floats, UTF-8), names and lists short."""
    try:
        check_value(frame, op.value)
    except ContractError as e:
        raise _FieldError(ErrorCode.BAD_FIELD, str(e)) from e
    for name in ("component", "name", "topic"):
        if isinstance(frame.get(name), str) and len(frame[name]) > MAX_NAME:
            raise _FieldError(
                ErrorCode.BAD_FIELD, f"{op.value}: field {name!r} is longer than {MAX_NAME}"
            )
    for name in ("components", "topics"):
        values = frame.get(name) or []
        if len(values) > MAX_FILTER_NAMES or not all(
            isinstance(v, str) and len(v) <= MAX_NAME for v in values
        ):
            raise _FieldError(
                ErrorCode.BAD_FIELD,
                f"{op.value}: field {name!r} must be at most {MAX_FILTER_NAMES} names "
                f"of at most {MAX_NAME} characters",
            )
    timeout = frame.get("timeout")
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise _FieldError(
            ErrorCode.BAD_FIELD, f"{op.value}: timeout must be in (0, {MAX_TIMEOUT:g}] seconds"
        )


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


class _FieldError(InvalidInputError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_code_of(error: InvalidInputError) -> ErrorCode:
    if isinstance(error, ContractError):
        return ErrorCode.BAD_FIELD
    return getattr(error, "code", ErrorCode.BAD_FRAME)


def frame(op: Op, **fields: Any) -> Frame:
    return {"v": PROTOCOL_VERSION, "op": op.value, **fields}
