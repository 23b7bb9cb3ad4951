"""Communication stragglers: every rank slows down together while compute time does not.

A slow link slows every rank of the ring equally (each waits for the slowest hop), so per-rank step times
cannot show it, and a straggler detector that compares ranks with each other sees nothing. What does
show it: the whole step gets slower while the ranks' own compute time stays where it was. This detector
watches exactly that, per step, from the median step time (minus time spent waiting for a checkpoint's
staging) and the median compute time; a finding is the cue to run the pairwise collective probe, which
names the slow link's nodes. A global stall (shared storage, a busy file system) matches the same
pattern for a few steps; k-of-n over a window, and the probe's verdict, keep that from blaming a node.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class CommSlowdown:
    since_step: int  # first slow step of the episode
    step_ratio: float  # median step time over the window's slow steps / normal step time
    compute_ratio: float  # the same for compute time (about 1: compute did not slow)


class CommSlowdownDetector:
    def __init__(self, window: int = 8, min_steps: int = 5, factor: float = 1.5,
                 compute_tolerance: float = 1.2, warmup_steps: int = 3, normal_window: int = 32) -> None:
        if not 1 <= min_steps <= window:
            raise ValueError(f"min_steps={min_steps} must be between 1 and window={window}")
        self.window, self.min_steps, self.factor = window, min_steps, factor
        self.compute_tolerance, self.warmup_steps, self.normal_window = compute_tolerance, warmup_steps, normal_window
        self.reset()

    def reset(self) -> None:
        """Forget everything: a relaunch may land on other nodes and links."""
        self._seen = 0
        self._normal_step: deque[float] = deque(maxlen=self.normal_window)
        self._normal_compute: deque[float] = deque(maxlen=self.normal_window)
        self._recent: deque[tuple[int, bool, float, float]] = deque(maxlen=self.window)
        self.flagged = False

    def observe(self, step: int, step_s: float, compute_s: float) -> CommSlowdown | None:
        """One step's median step and compute time; a finding when an episode newly starts."""
        self._seen += 1
        if self._seen <= self.warmup_steps or step_s <= 0:
            return None  # first steps pay one-off costs (allocations, caches)
        if len(self._normal_step) < self.min_steps:
            self._normal_step.append(step_s)
            self._normal_compute.append(compute_s)
            return None
        base_step, base_compute = median(self._normal_step), median(self._normal_compute)
        slow = step_s >= self.factor * base_step and compute_s <= self.compute_tolerance * max(base_compute, 1e-9)
        self._recent.append((step, slow, step_s / base_step, compute_s / max(base_compute, 1e-9)))
        if not slow and step_s < self.factor * base_step:
            self._normal_step.append(step_s)
            self._normal_compute.append(compute_s)
        count = sum(1 for _, s, _, _ in self._recent if s)
        if self.flagged:
            self.flagged = count >= self.min_steps // 2
            return None
        if count < self.min_steps:
            return None
        self.flagged = True
        slow_rows = [r for r in self._recent if r[1]]
        return CommSlowdown(since_step=slow_rows[0][0], step_ratio=median(r[2] for r in slow_rows),
                            compute_ratio=median(r[3] for r in slow_rows))
