"""Liveness of an attempt: a hang, silent ranks, or a node gone quiet, from receive times and a clock.

The supervisor's one rule (pure: it passes its receive times and ``now``). Heartbeats come from a thread
of their own, so a rank blocked in a collective keeps sending them while making no progress; progress is
a step report, or the end of a checkpoint save, eval or restore. When no rank has progressed for longer
than the limit (the hang timeout, or ``hang_step_multiple`` times the slowest recent step when that is
longer; before the first step, or while a rank is busy saving or restoring, the start-up timeout):
- every rank of some node unheard for a while, others heard: those nodes failed (dead or cut off);
- else some rank still heartbeating: a ``hang`` (stuck in a collective, a dead-locked loader);
- else nothing heard at all: ``silent``.
Gloo's 30-minute and NCCL's 10-minute collective timeouts would otherwise hide all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from health.detectors.silence import silent_nodes


@dataclass(frozen=True)
class LivenessLimits:
    hang_timeout_s: float
    startup_timeout_s: float
    heartbeat_interval_s: float
    step_multiple: float = 0.0  # the hang limit is at least this many times the slowest recent step


@dataclass(frozen=True)
class LivenessFinding:
    kind: Literal["node_failure", "hang", "silent"]
    since_t: float  # when progress stopped (the fault's time)
    node: str | None
    detail: str


def stall_limit(limits: LivenessLimits, started: bool, busy: bool, slowest_step_s: float = 0.0) -> float:
    """The hang timeout once steps come (stretched to ``step_multiple`` slowest recent steps: a fixed
    limit read a loaded machine's 1-2 s steps as hangs), the start-up timeout before (imports,
    compilation, restore) and while any rank is busy with a save, an eval or a restore."""
    hang = max(limits.hang_timeout_s, limits.step_multiple * slowest_step_s)
    limit = hang if started else limits.startup_timeout_s
    return max(limit, limits.startup_timeout_s) if busy else limit


def assess_stall(now: float, last_progress_t: float, last_hb: Mapping[int, float], rank_node: Mapping[int, str],
                 exited: set[int], limits: LivenessLimits, started: bool, busy: bool,
                 slowest_step_s: float = 0.0) -> list[LivenessFinding]:
    """Findings when no rank has progressed since ``last_progress_t`` for longer than the limit; empty
    otherwise. ``last_hb``: rank -> last time anything was heard from it; ``exited``: ranks that ended
    cleanly (their silence is no fault); ``slowest_step_s``: the slowest of the attempt's recent steps."""
    limit = stall_limit(limits, started, busy, slowest_step_s)
    stalled = now - last_progress_t
    if stalled <= limit:
        return []
    since = now - stalled
    quiet = max(4 * limits.heartbeat_interval_s, limit / 2)
    lost = silent_nodes(last_hb, rank_node, exited, now, quiet)
    if lost:
        return [LivenessFinding("node_failure", since, node,
                                f"no heartbeat from any rank of {node} for over {quiet:.1f}s while other nodes' "
                                "ranks are heard: dead or unreachable") for node in lost]
    silent = {r for r, t in last_hb.items() if now - t > limit and r not in exited}
    alive = [r for r in last_hb if r not in silent]
    return [LivenessFinding("hang" if alive else "silent", since, None,
                            f"no progress for {stalled:.1f}s (timeout {limit:.1f}s); {len(alive)} ranks still heartbeating")]
