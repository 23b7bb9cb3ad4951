"""Rank heartbeats (and optionally sections) for NVIDIA's ``ft_launcher``, so it can be compared fairly.

``ft_launcher`` (nvidia-resiliency-ext) finds a hung rank only from what the rank tells its rank monitor
(a side process per local rank, started by the launcher) through ``RankMonitorClient``; without that its
hang detection is blind. The benchmark (``benchmarks/bench_goodput_vs_torchrun.py``) runs this trainer
under ``ft_launcher``, so:

* heartbeats (default): one per training step, where our trainer reports a step. ft's docs warn that
  none are sent during checkpoint saves and loads, so its heartbeat timeout must cover them;
* sections (``ORCH_FT_SECTIONS=1``, the harness's ``--ft-mode sections``): the same rule as our
  supervisor's, in ft's own terms: a ``step`` section from one step report to the next (our hang
  timeout), ``busy`` while the loop says it checkpoints, restores or evaluates, and ``setup`` until the
  first step (both our start-up timeout). Heartbeats are sent as well.

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
SECTIONS_ENV = "ORCH_FT_SECTIONS"


class _Sender(Protocol):
    phase: str

    def send(self, type_: str, **fields: Any) -> None: ...
    def close(self) -> None: ...


def under_ft_launcher(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when this rank was started by ft_launcher (its rank monitor socket is in the environment)."""
    return FT_SOCKET_ENV in (os.environ if env is None else env)


def section_for(phase: str) -> str:
    """Our trainer's phase → the ft section that times it: the loop's step, start-up, or a busy phase."""
    return {"step": "step", "start": "setup"}.get(phase, "busy")


class FtHeartbeat:
    """One RankMonitorClient for this rank: connected at construction, one heartbeat per call."""

    def __init__(self, sections: bool = False) -> None:
        from nvidia_resiliency_ext.fault_tolerance import RankMonitorClient
        self._client: Any = RankMonitorClient()
        # Connecting starts the monitor's clocks (initial heartbeat, out of section): they cover
        # process-group init, model build and checkpoint restore until the first step.
        self._client.init_workload_monitoring()
        self.beats = 0
        self._ok = True
        self.section: str | None = None
        if sections:
            self.enter("setup")

    def _call(self, what: str, *args: str) -> None:
        """Call the client; if the monitor is gone, say so once and stop (training must not die of it)."""
        if not self._ok:
            return
        try:
            getattr(self._client, what)(*args)
        except Exception as exc:  # RankMonitorClientError, or the socket under it
            self._ok = False
            print(f"ft_heartbeat: {what} failed, monitoring stopped: {exc}", file=sys.stderr, flush=True)

    def beat(self) -> None:
        self._call("send_heartbeat")
        if self._ok:
            self.beats += 1

    def enter(self, section: str) -> None:
        """Close the open section (if any) and open ``section``: its timeout starts now."""
        if self.section is not None:
            self._call("end_section", self.section)
        self.section = section
        self._call("start_section", section)

    def close(self) -> None:
        """Disconnect cleanly (idempotent): the monitor then sees a rank that finished, not one that hung."""
        if self._ok:
            self._ok = False
            try:
                self._client.shutdown_workload_monitoring()
            except Exception:
                pass


def _watch_phase(tel: _Sender, on_change: Any) -> None:
    """Call ``on_change(new)`` whenever the loop changes ``tel.phase``: a per-instance subclass with a
    ``phase`` property (the value stays in the instance's dict, where the heartbeat thread reads it)."""
    cls = type(tel)

    def get(self: Any) -> str:
        return self.__dict__["phase"]

    def set_(self: Any, value: str) -> None:
        old, self.__dict__["phase"] = self.__dict__.get("phase"), value
        if value != old:
            on_change(value)

    tel.__class__ = type(cls.__name__, (cls,), {"phase": property(get, set_)})


def attach(tel: _Sender) -> _Sender:
    """Under ft_launcher, make every ``tel.send("step", ...)`` also heartbeat (and, in sections mode,
    restart the ``step`` section) and ``tel.close()`` disconnect.

    The bound methods are shadowed on the instance rather than wrapped in a proxy: the training loop
    sets ``tel.step`` and ``tel.phase``, which the telemetry heartbeat thread reads, and those must keep
    landing on the real object. Outside ft_launcher ``tel`` is returned untouched.
    """
    if not under_ft_launcher():
        return tel
    sections = os.environ.get(SECTIONS_ENV) == "1"
    hb = FtHeartbeat(sections)
    send, close = tel.send, tel.close

    def send_and_beat(type_: str, **fields: Any) -> None:
        send(type_, **fields)
        if type_ == "step":
            hb.beat()
            if sections:
                hb.enter("step")  # the next step must be reported within the step timeout

    def close_both() -> None:
        hb.close()
        close()

    tel.send = send_and_beat  # type: ignore[method-assign]
    tel.close = close_both  # type: ignore[method-assign]
    if sections:
        _watch_phase(tel, lambda phase: hb.enter(section_for(phase)))
    atexit.register(hb.close)  # a path that returns without tel.close() still disconnects
    return tel
