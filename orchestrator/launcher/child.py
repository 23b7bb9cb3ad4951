"""What every process a node agent forks does first (a rank, a probe rank): one place, so they agree."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def become_child(out_fd: int, err_fd: int) -> None:
    """A process the agent forked (a rank, a probe rank): it dies with the agent (``PR_SET_PDEATHSIG``),
    takes default signal handling instead of the agent's, reads nothing, and writes to the given fds,
    which it then owns (they are closed once duplicated)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((devnull, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(fd, target)
    for fd in {devnull, out_fd, err_fd} - {0, 1, 2}:
        os.close(fd)
