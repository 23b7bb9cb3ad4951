"""The node agent's silence limit (health.detectors.agent_silence): a few times the agent's own largest
recent heartbeat gap, between a floor and ``health.agent_timeout_s``; the fixed timeout while it warms
up and while it works on a launch, and always with ``agent_gap_multiple`` 0."""

from __future__ import annotations

from health.detectors.agent_silence import FLOOR_S, WARMUP_GAPS, WINDOW_GAPS, AgentSilence, SilenceRule

RULE = SilenceRule(timeout_s=5.0, heartbeat_s=0.25, gap_multiple=4.0)


def beat(s: AgentSilence, sent: float, now: float | None = None) -> float:
    """One heartbeat sent at ``sent`` (the agent's clock), read at ``now`` (default: 10 ms later)."""
    now = sent + 0.01 if now is None else now
    s.heard(now, [{"ev": "hb", "t": sent}])
    return now


def steady(s: AgentSilence, n: int, every: float = 0.25, start: float = 0.0) -> float:
    t = start
    for _ in range(n):
        beat(s, t)
        t += every
    return t - every  # the last send time


def test_fixed_timeout_while_warming_up_then_the_floor() -> None:
    s = AgentSilence(RULE)
    last = steady(s, WARMUP_GAPS)  # WARMUP_GAPS - 1 gaps: still warming up
    assert s.lost(last + 0.01 + 4.9)[0] is False
    last = steady(s, 1, start=last + 0.25)
    heard = last + 0.01
    assert s.lost(heard + FLOOR_S - 0.05)[0] is False
    lost, silent, how = s.lost(heard + FLOOR_S + 0.05)
    assert lost and silent > FLOOR_S and "floor" in how and "limit 2.00s" in how, how


def test_a_stall_the_agent_showed_stretches_its_limit_up_to_the_timeout() -> None:
    s = AgentSilence(RULE)
    last = steady(s, 30)
    beat(s, last + 0.8)  # one 0.8 s stall in the window: limit 4 x 0.8 = 3.2 s
    last = steady(s, 5, start=last + 1.05)
    heard = last + 0.01
    assert s.lost(heard + 3.1)[0] is False
    lost, _, how = s.lost(heard + 3.3)
    assert lost and "3.20s" in how and "4 x its largest heartbeat gap" in how, how
    beat(s, last + 2.0)  # a 2 s stall: 8 s, capped at the timeout
    assert s.rule.limit(s.largest_gap())[0] == 5.0
    assert s.lost(last + 2.01 + 4.9)[0] is False


def test_old_stalls_leave_the_window() -> None:
    s = AgentSilence(RULE)
    last = steady(s, 30)
    beat(s, last + 1.0)
    assert s.rule.limit(s.largest_gap())[0] == 4.0
    steady(s, WINDOW_GAPS, start=last + 1.25)
    assert s.rule.limit(s.largest_gap())[0] == FLOOR_S


def test_a_supervisor_that_read_late_is_not_the_agents_stall() -> None:
    """Ten heartbeats read at once 2.5 s late: the gaps are the agent's send times (0.25 s), not the
    reads, and having just read them the agent is heard, not lost."""
    s = AgentSilence(RULE)
    last = steady(s, 30)
    late = last + 2.5
    s.heard(late, [{"ev": "hb", "t": last + 0.25 * (i + 1)} for i in range(10)])
    assert s.largest_gap() is not None and s.largest_gap() <= 0.25 + 1e-9
    assert s.lost(late + 0.1)[0] is False


def test_a_launch_is_judged_by_the_timeout_until_the_agent_says_it_is_done() -> None:
    """A launch forks ranks and may fetch memory copies in the agent's loop (seconds for a large model):
    the fixed timeout until its ``launched`` reply, and the gap across the work is not the agent's pace."""
    s = AgentSilence(RULE)
    last = steady(s, 30)
    sent_at = last + 0.02
    s.working(sent_at)
    assert s.lost(sent_at + 4.0)[0] is False  # 4 s of fetching: above the floor, below the timeout
    assert "works on a launch" in s.lost(sent_at + 4.0)[2]
    assert s.lost(sent_at + 5.2)[0] is True  # no launch takes longer than the timeout allows
    done = last + 4.2
    s.heard(done + 0.01, [{"ev": "hb", "t": last + 0.25}, {"ev": "launched", "t": done}, {"ev": "hb", "t": done + 0.25}])
    assert s.rule.limit(s.largest_gap(), busy=False)[0] == FLOOR_S  # the 4 s gap was the launch's work
    assert s.lost(done + 0.26 + FLOOR_S + 0.1)[0] is True


def test_gap_multiple_zero_keeps_the_fixed_timeout() -> None:
    s = AgentSilence(SilenceRule(5.0, 0.25, 0.0))
    last = steady(s, 60)
    assert s.lost(last + 0.01 + 4.9)[0] is False
    lost, _, how = s.lost(last + 0.01 + 5.1)
    assert lost and how == "timeout 5s"


def test_the_floor_follows_a_long_heartbeat_interval() -> None:
    assert SilenceRule(10.0, 1.0, 4.0).limit(0.2)[0] == 3.0  # 3 heartbeat intervals above FLOOR_S
    assert SilenceRule(1.5, 0.25, 4.0).limit(0.3)[0] == 1.5  # never above the configured timeout


def test_an_idle_spare_is_judged_by_the_fixed_timeout() -> None:
    """An agent that runs no rank of the attempt: nothing waits on it, so a starved host's 3 s pause is
    not a lost spare (the fast limit would have spent it at the floor)."""
    s = AgentSilence(RULE)
    heard = steady(s, 30) + 0.01
    assert s.lost(heard + 3.0)[0] is True  # running ranks: the floor judges it
    lost, _, how = s.lost(heard + 3.0, idle=True)
    assert lost is False and "idle" in how, how
    assert s.lost(heard + RULE.timeout_s + 0.1, idle=True)[0] is True
