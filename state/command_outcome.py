"""How a command's outcome becomes its final ack: the one mapping every component shares."""

from __future__ import annotations

from typing import Any

from state.acks import AckCode
from state.errors import ExpectedError, NotPermittedError, QueueFullError


class CommandTimeout(Exception):
    """A command that did not complete within its timeout (mapped to CMD_TIMEOUT)."""


class CommandAborted(Exception):
    """A command abandoned before completion (mapped to CMD_ABORTED)."""


def final_ack(outcome: Any) -> tuple[AckCode, str, dict[str, Any] | None]:
    """The final ack's code, result text and data for what a command returned or raised."""
    match outcome:
        case NotPermittedError():
            return AckCode.CMD_NOPERM, str(outcome), None
        case QueueFullError():
            return AckCode.CMD_REJECTED, str(outcome), None
        case CommandTimeout():
            return AckCode.CMD_TIMEOUT, str(outcome), None
        case CommandAborted():
            return AckCode.CMD_ABORTED, str(outcome), None
        case ExpectedError():
            return AckCode.CMD_FAILED, str(outcome), None
        case BaseException():
            return AckCode.CMD_FAILED, f"{type(outcome).__name__}: {outcome}", None
        case dict() | None:
            return AckCode.CMD_COMPLETE, "", outcome
        case _:
            return AckCode.CMD_COMPLETE, "", {"result": outcome}


def unexpected(outcome: Any) -> bool:
    """An exception that is a bug (logged with its traceback), not an answer to the caller."""
    return isinstance(outcome, BaseException) and not isinstance(outcome, _ANSWERS)


_ANSWERS = (NotPermittedError, QueueFullError, CommandTimeout, CommandAborted, ExpectedError)
