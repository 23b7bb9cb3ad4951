"""Rank heartbeats for NVIDIA's ``ft_launcher`` (nvidia-resiliency-ext), so it can be compared fairly.

``ft_launcher`` finds a hung rank only from heartbeats the rank sends through ``RankMonitorClient`` to
its rank monitor (a side process per local rank, started by the launcher); without them its hang
detection is blind. The benchmark (``benchmarks/bench_goodput_vs_torchrun.py``) runs this trainer under
``ft_launcher``, so each training step heartbeats, exactly where our own trainer reports a step.

Zero cost outside ``ft_launcher``: detection is one environment lookup (the launcher hands each rank its
monitor's IPC socket path in ``FT_RANK_MONITOR_IPC_SOCKET``); the package is imported only when that is
set, so it stays an optional extra (``orchestrator[bench]``).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Protocol

# The variable RankMonitorClient reads to find its monitor (nvidia_resiliency_ext.fault_tolerance.data).
FT_SOCKET_ENV = "FT_RANK_MONITOR_IPC_SOCKET"


class _Sender(Protocol):
    def send(self, type_: str, **fields: Any) -> None: ...
    def close(self) -> None: ...


def under_ft_launcher(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when this rank was started by ft_launcher (its rank monitor socket is in the environment)."""
    return FT_SOCKET_ENV in (os.environ if env is None else env)


class FtHeartbeat:
    """One RankMonitorClient for this rank: connected at construction, one heartbeat per call."""

    def __init__(self) -> None:
        from nvidia_resiliency_ext.fault_tolerance import RankMonitorClient
        self._client: Any = RankMonitorClient()
        # Connecting starts the monitor's initial-heartbeat clock (initial_rank_heartbeat_timeout):
        # it covers process-group init, model build and checkpoint restore until the first step.
        self._client.init_workload_monitoring()
        self.beats = 0
        self._ok = True

    def beat(self) -> None:
        """Send one heartbeat; if the monitor is gone, say so once and stop (training must not die of it)."""
        if not self._ok:
            return
        try:
            self._client.send_heartbeat()
            self.beats += 1
        except Exception as exc:  # RankMonitorClientError, or the socket under it
            self._ok = False
            print(f"ft_heartbeat: heartbeats stopped: {exc}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Disconnect cleanly (idempotent): the monitor then sees a rank that finished, not one that hung."""
        if self._ok:
            self._ok = False
            try:
                self._client.shutdown_workload_monitoring()
            except Exception:
                pass


def attach(tel: _Sender) -> _Sender:
    """Under ft_launcher, make every ``tel.send("step", ...)`` also heartbeat and ``tel.close()`` disconnect.

    The bound methods are shadowed on the instance rather than wrapped in a proxy: the training loop
    sets ``tel.step`` and ``tel.phase``, which the telemetry heartbeat thread reads, and those must keep
    landing on the real object. Outside ft_launcher ``tel`` is returned untouched.
    """
    if not under_ft_launcher():
        return tel
    hb = FtHeartbeat()
    send, close = tel.send, tel.close

    def send_and_beat(type_: str, **fields: Any) -> None:
        send(type_, **fields)
        if type_ == "step":
            hb.beat()

    def close_both() -> None:
        hb.close()
        close()

    tel.send = send_and_beat  # type: ignore[method-assign]
    tel.close = close_both  # type: ignore[method-assign]
    atexit.register(hb.close)  # a path that returns without tel.close() still disconnects
    return tel
