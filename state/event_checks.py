"""The contract checks at a component's two event doors, and the count of what they refused.

Outgoing: a component's own payload that does not fit its topic's contract is not sent (no
consumer ever sees it). Incoming: a bus event that does not fit is not delivered, so another
component's bad output never reaches, let alone faults, this one. Either way the caller logs
the returned reason.
"""

from __future__ import annotations

from typing import Any

from state.contracts import ContractError, check_payload
from state.events import Event

#: Longest reason logged for one refusal.
MAX_REASON = 2000


class EventChecks:
    def __init__(self) -> None:
        #: Own events refused by their contract (logged, never sent).
        self.refused_publish = 0
        #: Bus events refused by their contract before reaching the component.
        self.refused_events = 0

    def outgoing(self, topic: str, data: Any) -> str | None:
        """None if ``data`` may be published on ``topic``; else why not (counted)."""
        try:
            check_payload(topic, data)
        except ContractError as e:
            self.refused_publish += 1
            return f"not publishing {topic}: {e}"[:MAX_REASON]
        return None

    def incoming(self, event: Event) -> str | None:
        """None if ``event`` may be delivered; else why not (counted)."""
        try:
            check_payload(event.topic, event.data)
        except ContractError as e:
            self.refused_events += 1
            return f"refused {event.component}/{event.topic} (seq {event.seq}): {e}"[:MAX_REASON]
        return None
