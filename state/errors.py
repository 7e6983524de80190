"""The one error hierarchy of dmcs.

Every error dmcs raises on purpose derives from :class:`DmcsError`, and falls in one of
three families that tell the caller what to do with it:

``DmcsError``
    ``ExpectedError`` -- the caller gave something wrong or asked at the wrong time. Report the
    message to whoever asked; no traceback, no retry.

        ``ConfigurationError``   invalid or missing configuration (raised once, at load).
        ``InvalidInputError``    malformed data: frames, files, arrays, parameters.
        ``CommandRejected``      a command that cannot be run: unknown, bad parameters, wrong
                                 state. Components map it to CMD_FAILED with the message.
        ``NotPermittedError``    an identity not on the component's authorized list (CMD_NOPERM).
        ``QueueFullError``       a component's bounded command queue is full (CMD_REJECTED).
        ``AckError``             raised by the client when a command ends with a non-success
                                 ack; carries the ``ack``. Subclasses by ack code:
                                 ``CommandFailedError``, ``CommandNoPermissionError``,
                                 ``CommandAbortedError``, ``CommandTimeoutError``,
                                 ``CommandQueueFullError``.

    ``RetriableError`` -- a transient failure (an outage, a restarting database, a link that is
    down). Retrying later may succeed; the caller decides how often.

        ``ConnectionLostError``  the peer (gateway, database, link) went away.
            ``DatabaseUnavailableError`` PostgreSQL is down, restarting or out of connections.
        ``TransactionConflictError`` a serialization failure or deadlock; rerun the transaction.
        ``NotReadyError``        a peer asked for data-plane work while not ENABLED.
        ``ChecksumMismatchError`` data arrived corrupted (checksum differs); send it again.
        ``BufferFullError``      a bounded store (the summit buffer) has no room now.

    ``NonRetriableError`` -- the work cannot succeed by retrying (a corrupt file, a bug, a
    failed invariant). Record the reason and move on; a component may go to FAULT.

        ``StorageError``         a durable write that failed (disk full, unwritable path).
        ``PeerFailedError``      a peer's data-plane method failed unexpectedly (its bug).
        ``IncompatibleDatabaseError`` a store's recorded schema version, code version or frozen
                                 parameter differs from what this code expects.

Algorithms (pure functions) raise ``ValueError`` on bad arrays; the adapters that call them
wrap those as ``InvalidInputError`` with ``raise ... from e``.
"""

from __future__ import annotations

from typing import Any


class DmcsError(Exception):
    """Root of every error dmcs raises on purpose."""


class ExpectedError(DmcsError):
    """The request was wrong or untimely; report the message, do not retry."""


class ConfigurationError(ExpectedError):
    """Invalid or missing configuration."""


class InvalidInputError(ExpectedError):
    """Malformed input data: a frame, a file, an array or a parameter."""


class CommandRejected(ExpectedError):
    """A command that cannot run: unknown, badly parameterized or in the wrong state."""


class NotPermittedError(ExpectedError):
    """The commanding identity is not authorized for this component."""


class QueueFullError(ExpectedError):
    """The component's bounded command queue is full."""


class RetriableError(DmcsError):
    """A transient failure; the same request may succeed later."""


class ConnectionLostError(RetriableError):
    """The peer went away (gateway, database or summit-base link)."""


class DatabaseUnavailableError(ConnectionLostError):
    """The database cannot be reached now (down, restarting, or out of connections)."""


class TransactionConflictError(RetriableError):
    """A transaction lost a serialization conflict or deadlock; retrying it is safe."""


class ChecksumMismatchError(RetriableError):
    """Data arrived with a checksum other than the sender's; the sender should send it again."""


class BufferFullError(RetriableError):
    """A bounded store has no room for more data until some is sent or deleted."""


class NotReadyError(RetriableError):
    """A component asked for data-plane work while not ENABLED (down, recovering, in FAULT)."""


class NonRetriableError(DmcsError):
    """A failure that retrying cannot fix."""


class StorageError(NonRetriableError):
    """A durable write failed."""


class StartupError(NonRetriableError):
    """Something the system needs (Ray, PostgreSQL, a component) did not come up in time."""


class IncompatibleDatabaseError(NonRetriableError):
    """A store was created or migrated by code it is not compatible with (see ``base.db``)."""

    def __init__(
        self, store: str, where: str, key: str, recorded: object, expected: object, hint: str
    ) -> None:
        self.store, self.where, self.key = store, where, key
        self.recorded, self.expected, self.hint = recorded, expected, hint
        super().__init__(
            f"{store} store in {where}: recorded {key} is {recorded!r} but this code expects"
            f" {expected!r}; {hint}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (Ray) intact
        args = (self.store, self.where, self.key, self.recorded, self.expected, self.hint)
        return (type(self), args)


class PeerFailedError(NonRetriableError):
    """A peer's data-plane method failed with an unexpected (non-dmcs) error; a bug there."""


class AckError(ExpectedError):
    """A command ended with an unsuccessful final ack (raised by the client)."""

    def __init__(self, ack: Any) -> None:
        self.ack = ack
        super().__init__(f"{ack.component}.{ack.command}: {ack.code.name} {ack.result}".strip())


class CommandFailedError(AckError):
    """CMD_FAILED."""


class CommandNoPermissionError(AckError):
    """CMD_NOPERM."""


class CommandAbortedError(AckError):
    """CMD_ABORTED."""


class CommandTimeoutError(AckError):
    """CMD_TIMEOUT, or no final ack arrived in time."""


class CommandQueueFullError(AckError):
    """CMD_REJECTED: the component's command queue was full."""
