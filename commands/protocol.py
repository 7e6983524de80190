"""The dmcs wire protocol, version 1 (documented with examples in docs/protocol.md).

Every frame is a map carrying ``"v": 1`` and an ``"op"``. A WebSocket connection speaks
msgpack in binary frames (subprotocol ``dmcs.v1.msgpack``, the default) or JSON in text
frames (subprotocol ``dmcs.v1.json``, for browsers).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import msgpack

from state.errors import InvalidInputError

PROTOCOL_VERSION = 1
SUBPROTOCOL_MSGPACK = "dmcs.v1.msgpack"
SUBPROTOCOL_JSON = "dmcs.v1.json"
SUBPROTOCOLS = (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)

Frame = dict[str, Any]


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
        return json.dumps(frame, separators=(",", ":"), default=_json_default)

    def decode(self, payload: bytes | str) -> Frame:
        try:
            if isinstance(payload, bytes):
                frame = msgpack.unpackb(payload, raw=False, strict_map_key=True)
            else:
                frame = json.loads(payload)
        except (ValueError, msgpack.UnpackException, TypeError) as e:
            kind = "msgpack" if isinstance(payload, bytes) else "JSON"
            raise InvalidInputError(f"malformed {kind} frame: {e}") from e
        return frame


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
    return op


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


class _FieldError(InvalidInputError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_code_of(error: InvalidInputError) -> ErrorCode:
    return getattr(error, "code", ErrorCode.BAD_FRAME)


def frame(op: Op, **fields: Any) -> Frame:
    return {"v": PROTOCOL_VERSION, "op": op.value, **fields}
