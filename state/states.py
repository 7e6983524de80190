"""The summary-state machine of a component, as a transition table (after ts_salobj)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.IntEnum):
    """Summary states, numbered as ts_salobj's ``State`` so OCS tools read them unchanged."""

    DISABLED = 1
    ENABLED = 2
    FAULT = 3
    OFFLINE = 4
    STANDBY = 5


@dataclass(frozen=True, slots=True)
class Transition:
    command: str
    allowed_from: frozenset[State]
    to: State


TRANSITIONS: dict[str, Transition] = {
    t.command: t
    for t in (
        Transition("start", frozenset({State.STANDBY}), State.DISABLED),
        Transition("enable", frozenset({State.DISABLED}), State.ENABLED),
        Transition("disable", frozenset({State.ENABLED}), State.DISABLED),
        Transition("standby", frozenset({State.DISABLED, State.FAULT}), State.STANDBY),
        Transition("exitControl", frozenset({State.STANDBY}), State.OFFLINE),
    )
}

STATE_COMMANDS: frozenset[str] = frozenset(TRANSITIONS)
GENERIC_COMMANDS: frozenset[str] = STATE_COMMANDS | {"setLogLevel"}


def parse_state(value: str | int | State) -> State:
    """A State from its name (any case) or number; ValueError for anything else."""
    if isinstance(value, State):
        return value
    if isinstance(value, int):
        return State(value)
    try:
        return State[value.upper()]
    except KeyError as e:
        names = ", ".join(s.name for s in State)
        raise ValueError(f"unknown state {value!r}; expected one of {names}") from e


def transition_path(current: State, target: State) -> list[str]:
    """The state commands that walk ``current`` to ``target`` (empty when already there).

    FAULT cannot be a target (only a component enters it) and OFFLINE is left by no command.
    """
    if target == State.FAULT:
        raise ValueError("FAULT is entered only by the component itself")
    if current == State.OFFLINE and target != State.OFFLINE:
        raise ValueError("a component in OFFLINE cannot be commanded; restart it")
    frontier: list[tuple[State, list[str]]] = [(current, [])]
    seen = {current}
    while frontier:
        state, path = frontier.pop(0)
        if state == target:
            return path
        for t in TRANSITIONS.values():
            if state in t.allowed_from and t.to not in seen:
                seen.add(t.to)
                frontier.append((t.to, [*path, t.command]))
    raise ValueError(f"no command path from {current.name} to {target.name}")
