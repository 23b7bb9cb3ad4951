"""When a node agent's silence means a lost node: a limit that follows the agent's own heartbeat pace.

A node agent heartbeats every ``health.heartbeat_interval_s``; a fixed ``health.agent_timeout_s`` (5 s by
default) made every node failure cost at least that long. A plain shorter timeout is wrong for
production: a loaded node's agent can stall for a second or two (CPU starvation, a fork of a large
process, memory pressure) and would be declared lost. So, as phi-accrual detectors and the hang limit
(``health.hang_step_multiple``) do, the limit follows what this agent has shown:

    limit = min(agent_timeout_s, max(floor, gap_multiple x the largest heartbeat gap in the recent window))

with ``floor = max(3 x heartbeat_interval_s, FLOOR_S)``. The gaps are the agent's own: differences between
the send times its heartbeats carry, so a supervisor that was busy and read late does not count as the
agent's stall (the launchers read before they judge, so such a supervisor never declares a loss either).
Until ``WARMUP_GAPS`` gaps are known (an agent's first seconds: warm-up, the first fork) the fixed
timeout applies, and ``gap_multiple`` 0 keeps the fixed timeout always. So does the busy window after a
command that makes the agent work in its loop (a launch forks ranks and may fetch memory-tier copies from
another node, seconds for a large model): until the agent says the work is done (``launched``, ``probe``),
at most ``agent_timeout_s``, silence is judged as before, and the gap that spans the work is not the
agent's pace (the next gap counts from the work's end).

A wrongly declared loss is safe: the supervisor fences the attempt first, so a node declared lost while
alive commits nothing (its ranks' checkpoints and reports carry an old epoch and are refused); the cost is
a spare spent and the node excluded, which is why the floor and the stretch stay generous.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FLOOR_S = 2.0  # never below this: scheduling jitter on a busy host, whatever the heartbeat interval
WARMUP_GAPS = 8  # heartbeat gaps known before the limit adapts (the fixed timeout until then: 2 s at 0.25 s)
WORK_DONE = ("launched", "probe")  # replies that end the busy window of the command they answer
WINDOW_GAPS = 240  # the recent window: 60 s of heartbeats at 0.25 s, 2 min at 0.5 s


@dataclass(frozen=True)
class SilenceRule:
    timeout_s: float  # health.agent_timeout_s: the ceiling, and the limit while warming up
    heartbeat_s: float  # health.heartbeat_interval_s
    gap_multiple: float  # health.agent_gap_multiple; 0: the fixed timeout

    def limit(self, largest_gap_s: float | None, busy: bool = False) -> tuple[float, str]:
        """The silence limit and how it was chosen (for the journal): ``largest_gap_s`` None while the
        agent is still warming up; ``busy`` in the window after a command that makes it work."""
        if self.gap_multiple <= 0:
            return self.timeout_s, f"timeout {self.timeout_s:g}s"
        if largest_gap_s is None or busy:
            why = "warms up" if largest_gap_s is None else "works on a launch"
            return self.timeout_s, f"timeout {self.timeout_s:g}s while the agent {why}"
        floor = max(3 * self.heartbeat_s, FLOOR_S)
        stretched = self.gap_multiple * largest_gap_s
        limit = min(self.timeout_s, max(floor, stretched))
        how = ("timeout" if limit == self.timeout_s else
               "floor" if floor >= stretched else f"{self.gap_multiple:g} x its largest heartbeat gap")
        return limit, (f"limit {limit:.2f}s: {how} (largest gap {largest_gap_s:.2f}s, floor {floor:g}s, "
                       f"timeout {self.timeout_s:g}s)")


@dataclass
class AgentSilence:
    """One agent's heartbeat record as the supervisor receives it: when it was last heard (the
    supervisor's monotonic clock) and the gaps between its heartbeats' own send times."""

    rule: SilenceRule
    heard_t: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_GAPS))
    busy_until: float = float("-inf")
    _last_sent: float | None = None

    def working(self, now: float) -> None:
        """A command that makes the agent work in its loop (a launch) was just sent."""
        self.busy_until = now + self.rule.timeout_s

    def heard(self, now: float, msgs: Iterable[Mapping[str, Any]]) -> None:
        """Messages just read from the agent at ``now``; heartbeats (``ev`` "hb", with ``t``) add gaps."""
        any_msg = False
        for m in msgs:
            any_msg = True
            sent = m.get("t")
            if m.get("ev") in WORK_DONE:
                self.busy_until = float("-inf")
                self._last_sent = float(sent) if isinstance(sent, int | float) else self._last_sent
            elif m.get("ev") == "hb" and isinstance(sent, int | float):
                if self._last_sent is not None and now >= self.busy_until:
                    self.gaps.append(max(0.0, float(sent) - self._last_sent))
                self._last_sent = float(sent)
        if any_msg:
            self.heard_t = now

    def largest_gap(self) -> float | None:
        return max(self.gaps) if len(self.gaps) >= WARMUP_GAPS else None

    def silent_for(self, now: float) -> float:
        return 0.0 if self.heard_t is None else now - self.heard_t

    def limit_at(self, now: float, idle: bool = False) -> tuple[float, str]:
        """The silence limit in force at ``now``, and how it was chosen. ``idle``: the agent runs no rank
        of the attempt (a spare): nothing waits on it, so only the fixed timeout judges it; the fast
        limit would spend spares on a starved host's pauses and gain nothing."""
        if idle:
            return self.rule.timeout_s, f"timeout {self.rule.timeout_s:g}s for an idle agent"
        return self.rule.limit(self.largest_gap(), busy=now < self.busy_until)

    def lost(self, now: float, idle: bool = False) -> tuple[bool, float, str]:
        """Whether the agent has been silent past its limit; the silence and how the limit was chosen."""
        limit, how = self.limit_at(now, idle)
        silent = self.silent_for(now)
        return silent > limit, silent, how


def rule_for(health: Any) -> SilenceRule:
    """The rule a run's ``health`` config section (spec.config.HealthConfig) asks for."""
    return SilenceRule(health.agent_timeout, health.heartbeat_interval_s, health.agent_gap_multiple)
