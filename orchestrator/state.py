"""The run's state machine: an Enum of states and a table of legal transitions; anything else raises."""

from __future__ import annotations

from enum import Enum


class RunState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


ALLOWED: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.FAILED, RunState.RECOVERING}),
    RunState.RUNNING: frozenset({RunState.RECOVERING, RunState.COMPLETED, RunState.FAILED}),
    RunState.RECOVERING: frozenset({RunState.RUNNING, RunState.FAILED}),
    RunState.COMPLETED: frozenset(),
    RunState.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


class StateMachine:
    def __init__(self, state: RunState = RunState.PENDING) -> None:
        self.state = state

    def can(self, to: RunState) -> bool:
        return to in ALLOWED[self.state]

    def go(self, to: RunState) -> RunState:
        """Move to ``to``; returns the previous state. Raises IllegalTransition otherwise."""
        if to not in ALLOWED[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {to.value} is not allowed")
        prev, self.state = self.state, to
        return prev

    @property
    def terminal(self) -> bool:
        return not ALLOWED[self.state]
