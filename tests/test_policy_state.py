"""The pure parts of the supervisor: the state machine's transition table and the fault → action policy."""

from __future__ import annotations

import pytest

from spec.config import PolicyConfig, RunConfig
from orchestrator.goodput import GoodputMeter
from orchestrator.policy import Situation, decide
from orchestrator.state import IllegalTransition, RunState, StateMachine
from orchestrator.supervisor import shrunk_node_count


def test_legal_path_and_illegal_transitions() -> None:
    sm = StateMachine()
    for to in (RunState.RUNNING, RunState.RECOVERING, RunState.RUNNING, RunState.COMPLETED):
        sm.go(to)
    assert sm.terminal
    with pytest.raises(IllegalTransition):
        sm.go(RunState.RUNNING)
    with pytest.raises(IllegalTransition):
        StateMachine().go(RunState.COMPLETED)


S = Situation(restarts_used=0, spares_left=1, nodes_needed=2, nodes_healthy=2)


@pytest.mark.parametrize("kind,node,action,exclude", [
    ("nan", None, "skip_step", False),
    ("loss_spike", None, "skip_step", False),
    ("rank_crash", "node1", "relaunch", False),
    ("hang", None, "relaunch", False),
    ("node_failure", "node1", "exclude_node", True),
    ("gpu_error", "node1", "exclude_node", True),
    ("collective_timeout", "node0", "relaunch", False),
    ("oom", "node0", "abort", False),
    ("straggler", "node0", "alert", False),
])
def test_policy_table(kind: str, node: str | None, action: str, exclude: bool) -> None:
    d = decide(kind, node, PolicyConfig(), S)
    assert (d.action, d.exclude_node) == (action, exclude)


def test_budget_spares_and_repeated_crashes() -> None:
    p = PolicyConfig(restart_budget=2)
    d = decide("rank_crash", "node1", p, Situation(2, 1, 2, 2))
    assert d.action == "abort" and "budget exhausted" in d.reason and "node1" in d.reason
    d = decide("node_failure", "node1", PolicyConfig(), Situation(0, 0, 2, 2))
    assert d.action == "abort" and "shrink_on_node_loss" in d.reason
    assert decide("node_failure", "node1", PolicyConfig(shrink_on_node_loss=True), Situation(0, 0, 2, 2)).relaunch
    assert decide("rank_crash", "node1", PolicyConfig(), Situation(0, 1, 2, 2, crashes_on_node=2)).exclude_node
    assert decide("straggler", "node1", PolicyConfig(straggler_action="exclude"), S).action == "exclude_node"


def test_shrunk_node_count_keeps_the_global_batch_divisible() -> None:
    cfg = RunConfig.model_validate({"cluster": {"nodes": 4, "ranks_per_node": 2}, "train": {"global_batch": 8}})
    assert shrunk_node_count(cfg, 3) == 2  # 3 nodes = dp 6 does not divide 8; 2 nodes = dp 4 does
    pinned = RunConfig.model_validate({"cluster": {"nodes": 2}, "parallel": {"dp": 4}})
    assert shrunk_node_count(pinned, 1) == 0


def test_goodput_meter_moves_redone_steps_to_recomputation() -> None:
    m = GoodputMeter(t0=0.0)
    for s in range(10):
        m.on_step(s, 1.0, skipped=False)
    m.on_step(10, 1.0, skipped=True)
    assert m.rewind(5) == 5
    assert m.productive == 5.0 and m.lost.recomputation == 6.0
    assert m.goodput(now=20.0) == 0.25


def test_goodput_meter_gives_back_steps_a_newer_restore_kept() -> None:
    """A relaunch assumed a resume at 5 (the copies it knew of); the ranks loaded a memory copy of step 8:
    steps 5..7 were never redone, so they are productive again; an older restore still redoes more."""
    m = GoodputMeter(t0=0.0)
    for s in range(10):
        m.on_step(s, 1.0, skipped=False)
    assert m.rewind(5) == 5 and m.lost.recomputation == 5.0
    assert m.resumed_at(8) == 3
    assert m.productive == 8.0 and m.lost.recomputation == 2.0
    assert m.resumed_at(9) == 0  # once per rewind
    assert m.rewind(8) == 0
    m.rewind(6)  # and a restore older than assumed still moves more to recomputation
    assert m.resumed_at(3) == 0 and m.productive == 6.0 and m.lost.recomputation == 4.0


def test_goodput_breakdown_adds_up_to_the_wall_time() -> None:
    """``other`` is what no kept step and no named cause explains (evaluation, work between steps): with
    it the breakdown adds up to wall - productive, and settled at step ends it never shrinks."""
    m = GoodputMeter(t0=0.0)
    seen = []
    for s in range(6):
        m.on_step(s, 1.0, skipped=False, ckpt_wait_s=0.25 if s == 3 else 0.0)
        m.settle(now=1.5 * (s + 1))  # each step ends 0.5 s after the previous one's 1.0 s
        seen.append(m.lost.other)
        assert abs(m.productive + m.lost.total() - 1.5 * (s + 1)) < 1e-9
    assert seen == sorted(seen) and abs(seen[-1] - 3.0) < 1e-9 and m.lost.checkpoint == 0.25
    m.rewind(4)  # a rollback moves kept seconds to recomputation, not into other
    m.settle(now=9.0)
    assert abs(m.lost.other - 3.0) < 1e-9 and m.lost.recomputation == 2.0
    m.on_step(4, 1.0, skipped=False)
    m.settle(now=10.3)  # this report was read 0.3 s late ...
    m.on_step(5, 1.0, skipped=False)
    m.settle(now=11.0)  # ... the next one on time: other never goes back down
    assert abs(m.lost.other - 3.3) < 1e-9


def test_placement_text_names_nodes_and_coordinates() -> None:
    from pathlib import Path

    from orchestrator.launcher.base import LaunchSpec
    from orchestrator.supervisor import placement_text
    cfg = RunConfig.model_validate({"parallel": {"tp": 2, "dp_mode": "fsdp"}})
    text = placement_text(cfg, LaunchSpec(1, ["node0", "node2"], 2, Path("."), "", Path(".")))
    assert "node2: r2(dp1,pp0,tp0) r3(dp1,pp0,tp1)" in text and text.startswith("attempt 1")


def test_straggler_excess_is_lost_time_not_productive() -> None:
    """Steps of 1 s, then a straggler doubles them from step 10; it is flagged at step 14 (since 10)."""
    from orchestrator.goodput import GoodputMeter
    since: list[int | None] = [None]
    m = GoodputMeter(t0=0.0, straggling_since=lambda: since[0])
    for step in range(20):
        if step == 14:
            since[0] = 10
        m.on_step(step, 2.0 if step >= 10 else 1.0, skipped=False)
    assert abs(m.lost.straggler - 10.0) < 1e-9  # steps 10..19, 1 s excess each, 10-13 charged back
    assert abs(m.productive - 20.0) < 1e-9
    assert m.rewind(15) == 5 and abs(m.lost.recomputation - 5.0) < 1e-9  # the kept 1 s of 15..19


def test_waiting_for_checkpoint_staging_is_checkpoint_time() -> None:
    from orchestrator.goodput import GoodputMeter
    m = GoodputMeter(t0=0.0)
    m.on_step(0, 1.5, skipped=False, ckpt_wait_s=0.5)
    assert abs(m.productive - 1.0) < 1e-9 and abs(m.lost.checkpoint - 0.5) < 1e-9
