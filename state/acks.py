"""Command acknowledgements, with ts_salobj's codes."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class AckCode(enum.IntEnum):
    CMD_ACK = 300
    CMD_INPROGRESS = 301
    CMD_COMPLETE = 303
    CMD_NOPERM = -300
    CMD_FAILED = -302
    CMD_ABORTED = -303
    CMD_TIMEOUT = -304
    #: dmcs addition: the component's bounded command queue was full; nothing was queued.
    CMD_REJECTED = -305

    @property
    def is_final(self) -> bool:
        return self not in (AckCode.CMD_ACK, AckCode.CMD_INPROGRESS)

    @property
    def is_good(self) -> bool:
        return self in (AckCode.CMD_ACK, AckCode.CMD_INPROGRESS, AckCode.CMD_COMPLETE)


@dataclass(frozen=True, slots=True)
class Ack:
    component: str
    command: str
    seq: int
    code: AckCode
    result: str = ""
    #: For CMD_INPROGRESS: the expected remaining time, seconds.
    timeout: float = 0.0
    #: Values a command returns on completion (plain, msgpack-able).
    data: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["code"] = int(self.code)
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Ack:
        return cls(
            component=str(wire["component"]),
            command=str(wire["command"]),
            seq=int(wire["seq"]),
            code=AckCode(int(wire["code"])),
            result=str(wire.get("result", "")),
            timeout=float(wire.get("timeout", 0.0)),
            data=wire.get("data"),
        )
