"""Each tier's checkpoint interval as the ranks apply it: fixed from the config, or (``auto``) set by
the supervisor's tuner (``orchestrator.interval``) through ``RUN_DIR/INTERVALS``.

Collective saves need every rank to change its interval at the same step: rank 0 alone reads the file
(one stat per step, re-read when it changed) and its values ride on the step's existing all-reduce
(:meth:`counts`, summed with zeros from the other ranks), so all ranks switch together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spec.layout import DEFAULT_AUTO_STORAGE, INTERVALS_FILE, read_intervals


class Intervals:
    def __init__(self, ckpt_cfg: Any, run_dir: Path | None, rank: int) -> None:
        mem, st = ckpt_cfg.memory.every_steps, ckpt_cfg.every_steps
        self.auto = not isinstance(mem, int) or not isinstance(st, int)
        self.memory = mem if isinstance(mem, int) else 1
        self.storage = st if isinstance(st, int) else DEFAULT_AUTO_STORAGE
        self._fixed = (isinstance(mem, int), isinstance(st, int))
        self.path = None if run_dir is None or rank != 0 or not self.auto else Path(run_dir) / INTERVALS_FILE
        self._seen: tuple[int, int] | None = None
        self._want = (float(self.memory), float(self.storage))

    def counts(self) -> tuple[float, ...]:
        """Rank 0's wanted intervals (zeros elsewhere); nothing at all when no tier is auto."""
        if not self.auto:
            return ()
        if self.path is None:
            return (0.0, 0.0)
        try:
            st = os.stat(self.path)
            key = (st.st_mtime_ns, st.st_size)
            if key != self._seen and (got := read_intervals(self.path.parent)) is not None:
                self._seen, self._want = key, (float(got[0]), float(got[1]))
        except OSError:
            pass
        return self._want

    def agreed(self, sums: list[float]) -> None:
        if not self.auto or len(sums) < 2:
            return
        mem, st = int(sums[0]), int(sums[1])
        if not self._fixed[0] and mem >= 1:
            self.memory = mem
        if not self._fixed[1] and st >= 1:
            self.storage = st
