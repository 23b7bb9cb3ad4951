"""Goodput (ETTR): productive training time over wall time, and where the rest went.

Productive time is the duration of every optimizer step that the final model keeps. A step redone after
a rollback or relaunch moves its first duration to ``recomputation``; a skipped step's time is lost too.
While a straggler holds the run back, each kept step's excess over the recent normal step time is lost
to ``straggler``: the step is kept, its slowness is not productive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from statistics import median

from orchestrator.snapshot import LostTime

NORMAL_WINDOW = 32  # recent step durations that set what a normal step costs


class GoodputMeter:
    def __init__(self, t0: float, straggling_since: Callable[[], int | None] = lambda: None) -> None:
        """``straggling_since``: the first slow step of the current straggler episode, None when none."""
        self.t0 = t0
        self.kept: dict[int, float] = {}
        self.lost = LostTime()
        self.straggling_since = straggling_since
        self._normal: deque[float] = deque(maxlen=NORMAL_WINDOW)
        self._charged: set[int] = set()
        self._rewound: dict[int, float] = {}  # the last rewind's steps, until the ranks say where they resumed

    def on_step(self, step: int, seconds: float, skipped: bool, ckpt_wait_s: float = 0.0,
                replay_s: float = 0.0) -> None:
        """``ckpt_wait_s``: the part of the step spent waiting for an async checkpoint's staging copy,
        which is checkpoint time, not training; ``replay_s``: the part spent replaying it (its own
        category, whether the step is then kept or skipped)."""
        wait = min(max(ckpt_wait_s, 0.0), seconds)
        self.lost.checkpoint += wait
        seconds -= wait
        replay = min(max(replay_s, 0.0), seconds)
        self.lost.replay += replay
        seconds -= replay
        if skipped:
            self.lost.recomputation += seconds
            return
        if step in self.kept:  # redone without a rollback we saw: count the earlier one as lost
            self.lost.recomputation += self.kept[step]
            self._charged.discard(step)
        self.kept[step] = seconds
        since = self.straggling_since()
        if since is None:
            self._normal.append(seconds)
        else:
            self._charge_straggler(since, step)

    def _charge_straggler(self, since: int, upto: int) -> None:
        """Move the excess of every kept step from the episode's first slow step to ``upto`` (detection
        comes a few steps after the slowdown) to lost time, against the median of recent normal steps.
        Walks only that range, not every step kept so far: this runs on each step of an episode."""
        if not self._normal:
            return
        normal = median(self._normal)
        for s in [s for s in range(since, upto + 1) if s in self.kept and s not in self._charged]:
            excess = max(0.0, self.kept[s] - normal)
            self.kept[s] -= excess
            self.lost.straggler += excess
            self._charged.add(s)

    def rewind(self, resume_step: int) -> int:
        """Steps from ``resume_step`` on will be redone; returns how many were lost."""
        gone = [s for s in self.kept if s >= resume_step]
        self._rewound = {}
        for s in gone:
            self._rewound[s] = self.kept.pop(s)
            self.lost.recomputation += self._rewound[s]
            self._charged.discard(s)
        return len(gone)

    def resumed_at(self, step: int) -> int:
        """The ranks resumed at ``step``, newer than the last rewind assumed (a memory-tier copy the
        supervisor had not heard of yet when it decided): the steps below it were never redone, so
        they are productive again; returns how many."""
        back = [s for s in self._rewound if s < step]
        for s in back:
            secs = self._rewound.pop(s)
            self.kept[s] = secs
            self.lost.recomputation -= secs
        self._rewound = {}
        return len(back)

    @property
    def productive(self) -> float:
        return sum(self.kept.values())

    def settle(self, now: float) -> None:
        """Set ``lost.other``: what of the wall time from ``t0`` to ``now`` (a step's end, or the run's)
        neither a kept step nor a named cause explains. Settled at step ends, and never lowered, as a
        counter must not be: the wall clock is the supervisor's reading time and a step's seconds the
        rank's own, so a report read late and the next one on time would otherwise take some back."""
        self.lost.other = max(self.lost.other, (now - self.t0) - self.productive - self.lost.named())

    def goodput(self, now: float) -> float:
        wall = max(now - self.t0, 1e-9)
        return min(1.0, self.productive / wall)
