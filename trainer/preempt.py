"""Preemption and time-limit warnings: a signal sets a flag, the loop checkpoints at the next step.

Slurm sends the warning signal (``--signal``) before the time limit and SIGTERM on preemption (then
SIGKILL after the partition's GraceTime); the handler only sets a flag, because saving from inside a
signal handler while a collective is in flight would deadlock. The signal reaches ranks at different
moments, so the loop agrees on the flag in the step's one all-reduce and every rank stops at the same
step. A rank's own launcher stops it with SIGKILL, never SIGTERM, so a stop is never read as preemption.
"""

from __future__ import annotations

import signal
import threading

_FLAG = threading.Event()


def install(signals: tuple[int, ...] = (signal.SIGUSR2,)) -> None:
    for sig in signals:
        signal.signal(sig, lambda *_: _FLAG.set())


def requested() -> bool:
    return _FLAG.is_set()


def request() -> None:
    _FLAG.set()
