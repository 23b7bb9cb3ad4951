"""What handling one telemetry message concluded, as values the supervisor applies (journal lines, faults,
suspects for triage, figures for the goodput meter and the snapshot). The handler (:mod:`run_events`)
decides; only the supervisor changes the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from health.detectors.comm_slowdown import CommSlowdown
from orchestrator.triage import Candidate


@dataclass(frozen=True)
class Journaled:
    """A journal line."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FaultFound:
    """A fault already acted on where it happened (skip, alert, fallback): journal it with its action."""

    candidate: Candidate
    action: str
    step: int | None = None


@dataclass(frozen=True)
class Suspect:
    """A fault the supervisor must act on: it goes to triage and then recovery."""

    candidate: Candidate


@dataclass(frozen=True)
class Snapshot:
    """Values of the run's snapshot that change (status, metrics)."""

    values: dict[str, Any]


@dataclass(frozen=True)
class Counted:
    """Add ``n`` to a counter of the snapshot."""

    name: str
    n: int = 1


@dataclass(frozen=True)
class StepTimed:
    """Rank 0's step: the goodput meter's and the interval tuner's inputs. ``first``: the attempt's first
    step, which ends the restart time."""

    step: int
    seconds: float
    skipped: bool
    ckpt_wait_s: float
    replay_s: float
    mem_block_s: float | None
    first: bool


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    save_s: float


@dataclass(frozen=True)
class Restored:
    """The ranks restored from ``tier``; ``step``: the step they actually loaded, when reported."""

    tier: str
    load_s: float
    step: int | None


@dataclass(frozen=True)
class RolledBack:
    """The ranks rolled back in process to ``to_step``, after ``skipped`` skipped batches."""

    to_step: int
    skipped: int
    candidate: Candidate
    from_step: int


@dataclass(frozen=True)
class Replayed:
    """A replayed step's verdict (trainer.replay), for :mod:`orchestrator.replay_events`."""

    msg: dict[str, Any]


@dataclass(frozen=True)
class SlowComm:
    """Every rank slowed while compute did not: the supervisor probes the links."""

    finding: CommSlowdown


@dataclass(frozen=True)
class Done:
    """Rank 0 finished the run."""

    msg: dict[str, Any]


Fact = (Journaled | FaultFound | Suspect | Snapshot | Counted | StepTimed | CheckpointSaved | Restored | RolledBack
        | Replayed | SlowComm | Done)
