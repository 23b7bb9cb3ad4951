"""Hang, silence and death of ranks, decided from heartbeat and progress times and an injected clock.

Three different failures need three different signals: a rank whose process is gone (the agent saw it
exit), a rank that is alive but whose heartbeat thread stopped talking (wedged interpreter, network
partition, SIGSTOP), and a rank that heartbeats but makes no step progress (stuck in a collective or a
dead-locked data loader). Only the last is a "hang" in the collective sense, and it is the one that the
30-minute gloo / 10-minute NCCL default timeouts would otherwise hide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

HangKind = Literal["hang", "gone", "silent"]


@dataclass(frozen=True)
class RankLiveness:
    """What the supervisor knows about one rank; times are on the injected clock (unix seconds)."""

    alive: bool
    last_heartbeat_t: float | None
    last_progress_t: float | None
    step: int | None


@dataclass(frozen=True)
class HangFinding:
    rank: int
    kind: HangKind
    age_s: float
    detail: str


def _assess_one(now: float, rank: int, s: RankLiveness, hang_timeout_s: float,
                heartbeat_timeout_s: float) -> HangFinding | None:
    """One rank; gone beats silent beats hang, because each explains the next."""
    if not s.alive:
        age = now - s.last_heartbeat_t if s.last_heartbeat_t is not None else 0.0
        return HangFinding(rank, "gone", max(age, 0.0), f"process exited; last step {s.step}")
    if s.last_heartbeat_t is None:
        return None  # not started yet: the startup timeout covers this, not the hang detector
    hb_age = now - s.last_heartbeat_t
    if hb_age > heartbeat_timeout_s:
        return HangFinding(rank, "silent", hb_age,
                           f"no heartbeat for {hb_age:.1f}s (> {heartbeat_timeout_s:.1f}s); step {s.step}")
    if s.last_progress_t is None:
        return None
    prog_age = now - s.last_progress_t
    if prog_age > hang_timeout_s:
        return HangFinding(rank, "hang", prog_age,
                           f"heartbeating but no progress for {prog_age:.1f}s (> {hang_timeout_s:.1f}s) "
                           f"at step {s.step}")
    return None


def assess_liveness(now: float, ranks: Mapping[int, RankLiveness], hang_timeout_s: float,
                    heartbeat_timeout_s: float) -> list[HangFinding]:
    """Findings for every rank that is gone, silent or hung, in rank order.

    A rank that has not heartbeated yet, or has heartbeats but no step yet, is left to the startup
    timeout: the first step can legitimately take long (imports, compilation, checkpoint load).
    """
    out = []
    for rank in sorted(ranks):
        f = _assess_one(now, rank, ranks[rank], hang_timeout_s, heartbeat_timeout_s)
        if f is not None:
            out.append(f)
    return out


class LivenessArrays:
    """The same state as a ``Mapping[int, RankLiveness]`` but as numpy columns, for 10k+ ranks.

    The supervisor updates one slot per telemetry datagram (O(1)) and assesses all ranks in a few
    vectorised operations, instead of rebuilding 16k dataclasses per tick. NaN means "never seen".
    """

    def __init__(self, world_size: int) -> None:
        self.alive = np.ones(world_size, dtype=bool)
        self.last_heartbeat_t = np.full(world_size, np.nan)
        self.last_progress_t = np.full(world_size, np.nan)
        self.step = np.full(world_size, -1, dtype=np.int64)

    def heartbeat(self, rank: int, t: float) -> None:
        self.last_heartbeat_t[rank] = t

    def progress(self, rank: int, step: int, t: float) -> None:
        self.step[rank] = step
        self.last_progress_t[rank] = t
        self.last_heartbeat_t[rank] = t  # a step report proves the rank is talking, too

    def exited(self, rank: int) -> None:
        self.alive[rank] = False


def assess_liveness_arrays(now: float, s: LivenessArrays, hang_timeout_s: float,
                           heartbeat_timeout_s: float) -> list[HangFinding]:
    """Vectorised :func:`assess_liveness`; same rules, same findings, same order."""
    with np.errstate(invalid="ignore"):
        hb_age = now - s.last_heartbeat_t
        prog_age = now - s.last_progress_t
        gone = ~s.alive
        silent = s.alive & (hb_age > heartbeat_timeout_s)
        hang = s.alive & ~silent & ~np.isnan(hb_age) & (prog_age > hang_timeout_s)
    flagged = np.flatnonzero(gone | silent | hang)
    out = []
    for r in flagged.tolist():  # only the few flagged ranks pay Python cost
        step = int(s.step[r]) if s.step[r] >= 0 else None
        hb = None if np.isnan(s.last_heartbeat_t[r]) else float(s.last_heartbeat_t[r])
        pr = None if np.isnan(s.last_progress_t[r]) else float(s.last_progress_t[r])
        f = _assess_one(now, r, RankLiveness(bool(s.alive[r]), hb, pr, step),
                        hang_timeout_s, heartbeat_timeout_s)
        if f is not None:
            out.append(f)
    return out
