"""Preemption and time-limit warnings: a signal sets a flag, the loop checkpoints at the next step.

Slurm sends the warning signal (``--signal``) before the time limit and SIGTERM on preemption (then
SIGKILL after the partition's GraceTime); the handler only sets a flag, because saving from inside a
signal handler while a collective is in flight would deadlock. The signal reaches ranks at different
moments, so the loop agrees on the flag in the step's one all-reduce and every rank stops at the same
step. A rank's own launcher stops it with SIGKILL, never SIGTERM, so a stop is never read as preemption.
"""

from __future__ import annotations

import signal
from typing import Any

# A plain flag, not a threading.Event: Event.set() takes a lock, and on Slurm a rank gets SIGTERM twice at
# once (from Slurm and from its agent); the second handler ran inside the first one's Event.set() and
# waited on that lock forever (seen in the preemption test: rank 0 stuck, the run read as a hang).
_REQUESTED = [False]


def _on_signal(*_: Any) -> None:
    _REQUESTED[0] = True  # no lock, no allocation: safe however the handlers nest


def install(signals: tuple[int, ...] = (signal.SIGUSR2,)) -> None:
    for sig in signals:
        signal.signal(sig, _on_signal)


def requested() -> bool:
    return _REQUESTED[0]


def request() -> None:
    _REQUESTED[0] = True
