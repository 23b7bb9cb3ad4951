"""Straggler detection from per-rank step times, vectorised so one step costs well under a millisecond
at 16k ranks.

Rule. A rank's *ratio* at a step is its step time divided by the median step time of the *other* ranks
(the exact leave-one-out median, so a rank cannot hide itself in a small world). A step is *slow* for a
rank when its ratio reaches the halfway point between healthy (1.0) and ``factor`` — with step times
that jitter by a few percent, a rank that really is ``factor`` times slower sits *on* ``factor`` and
would be missed half the time by a test at ``factor`` itself. A rank becomes a straggler once it has
``min_steps`` slow steps within the last ``window`` steps: k-of-n rather than strictly consecutive, so
one lucky step does not reset a slow GPU, and one noisy step does not flag a healthy one. It stops being
one when fewer than ``min_steps // 2`` of the window are slow (hysteresis: no flapping findings).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StragglerFinding:
    rank: int
    node: str
    score: float  # step time / median of the others, median over the recent slow episode
    confidence: float  # fraction of steps since the episode began that were slow
    since_step: int  # first slow step of the episode


def median_of_others(t: np.ndarray) -> np.ndarray:
    """For each i, the median of ``t`` without element i, exactly, in O(n) (one partition).

    Removing one element shifts the middle order statistics by at most one place, so only the three
    central values of the whole array are needed; which of them is the others' median depends on
    whether ``t[i]`` lies below, at, or above the middle.
    """
    n = t.size
    if n < 2:
        return np.full(n, np.nan)
    if n == 2:
        return t[::-1].copy()
    m = (n - 1) // 2  # index of the others' median (n even) or upper middle (n odd)
    kth = sorted({max(m - 1, 0), m, min(m + 1, n - 1)})
    s = np.partition(t, kth)
    lo, mid, hi = s[max(m - 1, 0)], s[m], s[min(m + 1, n - 1)]
    if n % 2 == 0:  # n-1 others is odd: a single middle value
        return np.where(t <= mid, hi, mid)
    # n-1 others is even: mean of the two middle values of the others
    return np.where(t < mid, (mid + hi) / 2, np.where(t > mid, (lo + mid) / 2, (lo + hi) / 2))


def episode_start(slow: np.ndarray) -> int:
    """Index where the current slow episode began: the start of the densest trailing run of slow steps.

    The first slow flag in the window is the wrong answer: one noisy step a few steps before a real
    slowdown would date the episode before its cause (a straggler "since step 55" for a slowdown that
    began at 60). Scoring each suffix +1 per slow and -1 per normal step and taking the best-scoring
    suffix that starts on a slow step drops such an outlier once the normal steps after it outnumber it;
    ties go to the later start, so the date is never earlier than the evidence demands.
    """
    gain = np.where(slow[::-1], 1, -1).cumsum()[::-1]  # gain[k]: score of the suffix starting at k
    gain = np.where(slow, gain, np.iinfo(np.int64).min)
    best = gain.max()
    return int(np.flatnonzero(gain == best)[-1]) if slow.any() else 0


class StragglerDetector:
    """Feed it one step of per-rank times at a time; it returns the stragglers newly raised.

    State is a ring buffer of the last ``window`` ratios and slow flags for every rank, plus a running
    count of slow steps per rank, so each step is O(ranks) numpy work and nothing in Python per rank.
    """

    def __init__(self, window: int = 20, factor: float = 1.4, min_steps: int = 8,
                 groups: np.ndarray | None = None) -> None:
        if not 1 <= min_steps <= window:
            raise ValueError(f"min_steps={min_steps} must be between 1 and window={window}")
        if factor <= 1.0:
            raise ValueError(f"factor={factor} must be > 1 (a straggler is slower than the others)")
        self.window, self.factor, self.min_steps = window, factor, min_steps
        self.slow_at = 1.0 + (factor - 1.0) / 2.0
        self.slow_log = float(np.log(self.slow_at))
        self.groups = groups
        self.reset()

    def set_groups(self, groups: np.ndarray | None) -> None:
        """Model-parallel group of each rank (e.g. its data-parallel index: the ranks of one replica wait
        on each other in TP/PP collectives). A rank is not blamed while a slower rank of its own group
        explains its time; None: every rank stands alone."""
        self.groups = None if groups is None else np.asarray(groups)

    def reset(self) -> None:
        """Forget everything: after a relaunch ranks may sit on other nodes and times start afresh."""
        self._ranks: list[int] = []
        self._index: np.ndarray = np.zeros(0, dtype=np.int64)
        self._ratio = np.zeros((self.window, 0))
        self._slow = np.zeros((self.window, 0), dtype=bool)
        self._steps = np.full(self.window, -1, dtype=np.int64)
        self._count = np.zeros(0, dtype=np.int64)
        self._flagged = np.zeros(0, dtype=bool)
        self._since = np.zeros(0, dtype=np.int64)
        self._pos = 0
        self._seen = 0
        self._nodes: Mapping[int, str] = {}

    def _ensure_ranks(self, ranks: list[int]) -> None:
        """(Re)size the state when the rank set changes; a different set means a different job."""
        if ranks == self._ranks:
            return
        self.reset()
        self._ranks = ranks
        n = len(ranks)
        self._index = np.asarray(ranks, dtype=np.int64)
        self._ratio = np.full((self.window, n), np.nan)
        self._slow = np.zeros((self.window, n), dtype=bool)
        self._count = np.zeros(n, dtype=np.int64)
        self._flagged = np.zeros(n, dtype=bool)
        self._since = np.zeros(n, dtype=np.int64)

    def observe(self, step: int, times: Mapping[int, float],
                nodes: Mapping[int, str]) -> list[StragglerFinding]:
        """Record one step's per-rank step times; return findings newly raised at this step."""
        self._ensure_ranks(list(times))
        t = np.fromiter(times.values(), dtype=float, count=len(times))
        return self._observe(step, t, nodes)

    def observe_array(self, step: int, times: np.ndarray, nodes: Mapping[int, str]) -> list[StragglerFinding]:
        """:meth:`observe` for a supervisor that keeps one step's times as an array indexed by rank
        (NaN for a rank that did not report): skips the dict-to-array conversion, about half the cost
        at 16k ranks."""
        t = np.asarray(times, dtype=float)
        if len(self._ranks) != t.size:
            self._ensure_ranks(list(range(t.size)))
        return self._observe(step, t, nodes)

    def _observe(self, step: int, t: np.ndarray, nodes: Mapping[int, str]) -> list[StragglerFinding]:
        self._nodes = nodes
        if t.size < 2:
            return []
        p = self._pos
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(t, median_of_others(t), out=self._ratio[p])  # written in place: no copies
        self._count -= self._slow[p]  # the step falling out of the window
        np.greater_equal(self._ratio[p], self.slow_at, out=self._slow[p])  # NaN (missing): not slow
        self._count += self._slow[p]
        self._steps[p] = step
        self._pos = (p + 1) % self.window
        self._seen += 1
        self._flagged &= self._count >= self.min_steps // 2
        new = np.flatnonzero((self._count >= self.min_steps) & ~self._flagged)
        if new.size == 0:
            return []
        new = np.asarray([i for i in new.tolist() if self._confirmed(i) and not self._explained_by_peer(i)],
                         dtype=np.int64)
        self._flagged[new] = True
        found = [self._finding(int(i)) for i in new]
        self._since[new] = [f.since_step for f in found]
        return found

    def _confirmed(self, i: int) -> bool:
        """The k-of-n count is the cheap trigger; a burst (GC, a data-loader stall: a few steps at 2-5x)
        plus heavy-tailed jitter can fill it. Confirm that the rank is slow *now*: the mean log-ratio of
        its last 1.5 x ``min_steps`` steps, with the slowest quarter of them dropped (so a burst cannot
        carry it), must reach the slow threshold. A mean of logs is the efficient statistic for
        lognormal jitter; the trimming is what makes it robust."""
        _, ratios, _ = self._ordered(i)
        recent = ratios[-(self.min_steps + self.min_steps // 2):]
        recent = np.sort(np.log(recent[np.isfinite(recent) & (recent > 0)]))
        if recent.size < self.min_steps:
            return False
        kept = recent[: recent.size - recent.size // 4]
        return bool(kept.mean() >= self.slow_log)

    def _explained_by_peer(self, i: int) -> bool:
        """Under TP/PP a rank's compute time includes waiting on its slow peers: blame only the slowest."""
        if self.groups is None or i >= len(self.groups):
            return False
        peers = np.flatnonzero(self.groups[: len(self._ranks)] == self.groups[i])
        if peers.size < 2:
            return False
        rows = (self._pos - 1 - np.arange(min(self.min_steps, self._seen))) % self.window
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            recent = self._ratio[np.ix_(rows, peers)]
            med = np.nanmedian(recent, axis=0)  # now: the confirmation's statistic
            peak = np.nanmax(recent, axis=0)  # a peer's burst shows in its own steps, not in its median
        mine = peers.tolist().index(i)
        return bool(np.nanmax(med) > med[mine] * 1.05 or np.nanmax(peak) > peak[mine] * 1.05)

    def _ordered(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column i of the ring buffer, oldest first, only the filled slots."""
        order = (np.arange(self.window) + self._pos) % self.window
        filled = self._steps[order] >= 0
        if self._seen < self.window:
            order = order[filled]
        return self._steps[order], self._ratio[order, i], self._slow[order, i]

    def _finding(self, i: int) -> StragglerFinding:
        steps, ratios, slow = self._ordered(i)
        first = episode_start(slow)
        episode = slow[first:]
        rank = self._ranks[i]
        return StragglerFinding(rank=rank, node=str(self._nodes.get(rank, "?")),
                                score=float(np.nanmedian(ratios[first:][episode])),
                                confidence=float(episode.mean()), since_step=int(steps[first]))

    def _median_ratios(self) -> np.ndarray | None:
        """The median ratio over the window per rank column (NaN where a rank never reported)."""
        if not self._ranks or self._seen == 0:
            return None
        filled = self._ratio if self._seen >= self.window else self._ratio[self._steps >= 0]
        if not np.isnan(filled).any():  # the usual case: np.median is several times faster than nanmedian
            return np.median(filled, axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: rank never reported
            return np.nanmedian(filled, axis=0)

    def scores(self) -> dict[int, float]:
        """Latest robust score per rank: the median ratio over the window (NaN-free ranks only)."""
        med = self._median_ratios()
        return {} if med is None else {r: float(v) for r, v in zip(self._ranks, med.tolist()) if v == v}

    def worst_node(self) -> tuple[str, float] | None:
        """The node holding the highest-scoring rank, and that score; None before any step. (Once a second
        in publish: at 16k ranks a dict of scores and a max over it cost ~40 ms, the array ~1 ms.)"""
        med = self._median_ratios()
        if med is None or not (med == med).any():
            return None
        i = int(np.nanargmax(med))
        rank = self._ranks[i]
        return str(self._nodes.get(rank, "?")), float(med[i])

    def episode_since(self) -> int | None:
        """The first slow step of the oldest straggler episode still open; None when nobody is flagged."""
        if not self._flagged.any():
            return None
        since = self._since[self._flagged]
        return int(since.min())

    def flagged(self) -> list[int]:
        """Ranks currently considered stragglers (raised and not yet cleared)."""
        return [self._ranks[i] for i in np.flatnonzero(self._flagged).tolist()]
