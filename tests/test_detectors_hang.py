"""The supervisor's one liveness rule (health.detectors.hang.assess_stall): hang, silent ranks, a node
gone quiet, and which timeout applies (hang once steps come; start-up before and while a rank is busy)."""

from __future__ import annotations

from health.detectors.hang import LivenessLimits, assess_stall, stall_limit

NOW = 1000.0
LIMITS = LivenessLimits(hang_timeout_s=10.0, startup_timeout_s=60.0, heartbeat_interval_s=1.0)
NODES = {0: "node0", 1: "node0", 2: "node1", 3: "node1"}


def test_progressing_or_within_the_limit_is_no_finding() -> None:
    hb = {r: NOW - 0.2 for r in NODES}
    assert assess_stall(NOW, NOW - 10.0, hb, NODES, set(), LIMITS, started=True, busy=False) == []
    assert assess_stall(NOW, NOW - 30.0, hb, NODES, set(), LIMITS, started=False, busy=False) == []


def test_heartbeating_without_progress_is_a_hang_since_the_last_progress() -> None:
    hb = {r: NOW - 0.2 for r in NODES}
    (f,) = assess_stall(NOW, NOW - 12.5, hb, NODES, set(), LIMITS, started=True, busy=False)
    assert (f.kind, f.node, f.since_t) == ("hang", None, NOW - 12.5)
    assert "no progress for 12.5s (timeout 10.0s); 4 ranks still heartbeating" == f.detail


def test_a_node_whose_every_rank_is_quiet_failed() -> None:
    hb = {0: NOW - 8.0, 1: NOW - 7.0, 2: NOW - 0.1, 3: NOW - 0.3}  # quiet = max(4 * 1 s, 10 / 2) = 5 s
    found = assess_stall(NOW, NOW - 11.0, hb, NODES, set(), LIMITS, started=True, busy=False)
    assert [(f.kind, f.node) for f in found] == [("node_failure", "node0")]
    # one rank of node0 heard again: no node is quiet, the stall is a hang
    hb[1] = NOW - 0.1
    assert [f.kind for f in assess_stall(NOW, NOW - 11.0, hb, NODES, set(), LIMITS, True, False)] == ["hang"]


def test_nothing_heard_at_all_is_silent() -> None:
    hb = {r: NOW - 20.0 for r in NODES}
    (f,) = assess_stall(NOW, NOW - 20.0, hb, NODES, set(), LIMITS, started=True, busy=False)
    assert f.kind == "silent" and "0 ranks still heartbeating" in f.detail


def test_the_limit_is_the_startup_timeout_before_steps_and_while_busy() -> None:
    assert stall_limit(LIMITS, started=True, busy=False) == 10.0
    assert stall_limit(LIMITS, started=False, busy=False) == 60.0
    assert stall_limit(LIMITS, started=True, busy=True) == 60.0
    hb = {r: NOW - 0.2 for r in NODES}
    assert assess_stall(NOW, NOW - 30.0, hb, NODES, set(), LIMITS, started=True, busy=True) == []
    assert [f.kind for f in assess_stall(NOW, NOW - 61.0, hb, NODES, set(), LIMITS, False, False)] == ["hang"]


def test_the_hang_limit_stretches_to_a_multiple_of_the_slowest_recent_step() -> None:
    """A loaded 2-core machine's 1.5 s steps once read as hangs under a 3 s limit (false relaunches)."""
    limits = LivenessLimits(hang_timeout_s=3.0, startup_timeout_s=60.0, heartbeat_interval_s=0.5, step_multiple=5.0)
    assert stall_limit(limits, started=True, busy=False, slowest_step_s=0.2) == 3.0  # fast steps: the floor
    assert stall_limit(limits, started=True, busy=False, slowest_step_s=1.5) == 7.5
    assert stall_limit(limits, started=False, busy=False, slowest_step_s=30.0) == 60.0  # start-up unchanged
    hb = {r: NOW - 0.2 for r in NODES}
    assert assess_stall(NOW, NOW - 6.0, hb, NODES, set(), limits, True, False, slowest_step_s=1.5) == []
    (f,) = assess_stall(NOW, NOW - 8.0, hb, NODES, set(), limits, True, False, slowest_step_s=1.5)
    assert f.kind == "hang" and "(timeout 7.5s)" in f.detail
    fixed = LivenessLimits(3.0, 60.0, 0.5, step_multiple=0.0)  # 0: the configured timeout only
    assert [f.kind for f in assess_stall(NOW, NOW - 6.0, hb, NODES, set(), fixed, True, False, 1.5)] == ["hang"]
