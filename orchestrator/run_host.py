"""What the replay verdict handler (:mod:`replay_events`) may use of the supervisor, as a protocol, so
that module does not import the supervisor that calls it."""

from __future__ import annotations

from typing import Any, Protocol

from health.detectors.lemon import LemonNodeStore
from orchestrator.attempt import AttemptWatch
from orchestrator.goodput import GoodputMeter
from orchestrator.journal import Journal
from orchestrator.snapshot import FaultRecord, RunSnapshot
from orchestrator.triage import Candidate


class RunHost(Protocol):
    journal: Journal
    snap: RunSnapshot
    meter: GoodputMeter
    lemons: LemonNodeStore | None
    watch: AttemptWatch | None

    def record_fault(self, c: Candidate, detected_t: float, action: str, lost_steps: int = 0,
                     step: int | None = None) -> FaultRecord: ...

    def exclude(self, node: str, reason: str, evidence: dict[str, Any] | None = None) -> None: ...
