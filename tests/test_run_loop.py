"""The watch loop's pure parts: telemetry handling returns facts (no supervisor needed to run it), the
loop's phases steer (a step out of order raises), and the backoff between attempts."""

from __future__ import annotations

from pathlib import Path

import pytest

from health.detectors.comm_slowdown import CommSlowdownDetector
from health.detectors.straggler import StragglerDetector
from orchestrator.attempt import AttemptWatch
from orchestrator.launcher.base import LaunchSpec
from orchestrator.run_events import RunEvents
from orchestrator.run_facts import CheckpointSaved, Counted, FaultFound, Journaled, Snapshot
from orchestrator.state import IllegalTransition, Phase, PhaseMachine, backoff_s
from spec.config import RunConfig


def _events(tmp_path: Path) -> tuple[RunEvents, AttemptWatch]:
    spec = LaunchSpec(2, ["node0", "node1"], 1, tmp_path, "127.0.0.1:0", tmp_path)
    events = RunEvents(tmp_path / "metrics.jsonl", RunConfig(), StragglerDetector(), CommSlowdownDetector(),
                       lambda *a: None)
    return events, AttemptWatch(spec, 100.0)


def test_a_skip_vote_of_every_rank_is_one_fault_and_one_skipped_batch(tmp_path: Path) -> None:
    events, w = _events(tmp_path)
    vote = {"type": "event", "kind": "skip_step", "attempt": 2, "step": 7, "rule": "spike", "t": 101.0}
    assert events.on_message({**vote, "rank": 0}, 101.0, w) == []
    facts = events.on_message({**vote, "rank": 1, "local_bad": True}, 101.5, w)
    (fault, counted) = facts
    assert isinstance(fault, FaultFound) and (fault.action, fault.step) == ("skip_step", 7)
    assert (fault.candidate.kind, fault.candidate.rank, fault.candidate.node) == ("loss_spike", 1, "node1")
    assert counted == Counted("batches_skipped")
    assert w.skip_votes == {}


def test_a_checkpoint_and_a_fenced_epoch_are_facts(tmp_path: Path) -> None:
    events, w = _events(tmp_path)
    facts = events.on_message({"type": "event", "kind": "checkpoint", "attempt": 2, "rank": 0, "step": 10,
                               "save_s": 0.25, "path": "p", "t": 102.0}, 102.0, w)
    assert CheckpointSaved(10, 0.25) in facts
    assert Journaled("checkpoint", {"step": 10, "path": "p", "save_s": 0.25}) in facts
    stale = events.on_message({"type": "step", "attempt": 1, "rank": 0, "step": 3, "t": 102.0}, 102.0, w)
    assert stale[0] == Snapshot({"stale_epoch_rejected": 1})
    assert isinstance(stale[1], Journaled) and stale[1].fields["epoch"] == 1 and stale[1].fields["current"] == 2


def test_the_phases_steer_the_loop() -> None:
    m = PhaseMachine()
    for to in (Phase.WATCHING, Phase.STOPPING, Phase.BACKOFF, Phase.RELAUNCHING, Phase.WATCHING, Phase.STOPPING,
               Phase.DONE):
        m.go(to)
    with pytest.raises(IllegalTransition):
        m.go(Phase.WATCHING)
    with pytest.raises(IllegalTransition):  # no relaunch without backing off, no watch of a stopped attempt
        PhaseMachine(Phase.STOPPING).go(Phase.RELAUNCHING)
    with pytest.raises(IllegalTransition):
        PhaseMachine(Phase.STOPPING).go(Phase.WATCHING)


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap() -> None:
    assert [backoff_s(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_s(10_000, 0.5, 3.0) == 3.0
