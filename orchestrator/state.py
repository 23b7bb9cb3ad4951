"""The run's state machine (its public state: PENDING, RUNNING, RECOVERING, COMPLETED, FAILED) and the
supervisor loop's phases (starting, watching, stopping, backoff, relaunching, done): each an Enum and a
table of legal transitions; anything else raises."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal


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


class Phase(str, Enum):
    """Where the supervisor's loop is within the run; the loop does what the phase says, and a step out
    of order (relaunching without backing off, watching a stopped attempt) raises."""

    STARTING = "starting"  # choosing nodes, pre-flight, first launch (or re-attach on resume)
    WATCHING = "watching"  # an attempt runs: telemetry, scheduler events, liveness
    STOPPING = "stopping"  # the attempt is over (done, dead, requeued, cancelled): ranks stopped, decided
    BACKOFF = "backoff"  # waiting before the next attempt
    RELAUNCHING = "relaunching"  # choosing nodes (spares, exclusions), pre-flight, launch
    DONE = "done"


PHASES: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.WATCHING, Phase.DONE}),
    Phase.WATCHING: frozenset({Phase.STOPPING, Phase.DONE}),
    Phase.STOPPING: frozenset({Phase.BACKOFF, Phase.DONE}),
    Phase.BACKOFF: frozenset({Phase.RELAUNCHING, Phase.DONE}),
    Phase.RELAUNCHING: frozenset({Phase.WATCHING, Phase.DONE}),
    Phase.DONE: frozenset(),
}


class PhaseMachine:
    def __init__(self, phase: Phase = Phase.STARTING) -> None:
        self.phase = phase

    def go(self, to: Phase) -> Phase:
        """Move to ``to``; returns the previous phase. Raises IllegalTransition otherwise."""
        if to not in PHASES[self.phase]:
            raise IllegalTransition(f"{self.phase.value} -> {to.value} is not allowed")
        prev, self.phase = self.phase, to
        return prev


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, returned to the loop that acts on it (no exception carries it)."""

    kind: Literal["completed", "relaunch", "abort"]
    reason: str = ""


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff before the next attempt: ``initial_s`` after the first failed attempt of this
    supervisor, doubling with each further one, at most ``max_s``."""
    return max(0.0, min(max_s, initial_s * 2.0 ** min(failures - 1, 64)))
