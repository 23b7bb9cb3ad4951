"""NVIDIA's ft_launcher as a peer in the goodput benchmark: the trainer heartbeats to it, and it works.

The heartbeat hook is checked with a fake client (no package needed). The end-to-end smokes run the
real ``ft_launcher`` (optional extra ``bench``: nvidia-resiliency-ext) through the benchmark harness on
2 simulated nodes x 1 rank; they are skipped, saying why, when the package is absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import ft_heartbeat  # noqa: E402

needs_ft = pytest.mark.skipif(
    importlib.util.find_spec("nvidia_resiliency_ext") is None
    or not Path(sys.executable).with_name("ft_launcher").exists(),
    reason="nvidia-resiliency-ext (ft_launcher) not installed: pip install -e '.[bench]'")


class FakeTelemetry:
    """Just the two methods attach() shadows, recording what went through them."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False
        self.step = 0
        self.phase = "start"

    def send(self, type_: str, **fields: Any) -> None:
        self.sent.append(type_)

    def close(self) -> None:
        self.closed = True


class FakeBeat:
    instances: list["FakeBeat"] = []

    def __init__(self, sections: bool = False) -> None:
        self.beats, self.closed = 0, False
        FakeBeat.instances.append(self)

    def beat(self) -> None:
        self.beats += 1

    def close(self) -> None:
        self.closed = True


def test_attach_is_a_no_op_outside_ft_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ft_heartbeat.FT_SOCKET_ENV, raising=False)
    tel = FakeTelemetry()
    assert ft_heartbeat.attach(tel) is tel
    assert "send" not in vars(tel) and "close" not in vars(tel)  # the class's own methods, untouched


def test_attach_heartbeats_on_each_step_and_disconnects_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ft_heartbeat.FT_SOCKET_ENV, "/nonexistent/rmon.socket")
    monkeypatch.delenv(ft_heartbeat.SECTIONS_ENV, raising=False)
    monkeypatch.setattr(ft_heartbeat, "FtHeartbeat", FakeBeat)
    monkeypatch.setattr(ft_heartbeat.atexit, "register", lambda fn: fn)  # keep the fake out of atexit
    tel = ft_heartbeat.attach(FakeTelemetry())
    hb = FakeBeat.instances[-1]
    for t in ("hb", "step", "event", "step"):
        tel.send(t, step=1)
    tel.step = 7  # attributes the loop sets still land on the real object
    assert tel.sent == ["hb", "step", "event", "step"] and hb.beats == 2 and vars(tel)["step"] == 7
    tel.close()
    assert hb.closed and tel.closed


def test_sections_mode_mirrors_the_loops_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup until the first step, busy while restoring/checkpointing, a fresh step section per step."""
    log: list[str] = []

    class Client:  # RankMonitorClient's calls, recorded
        def init_workload_monitoring(self) -> None: log.append("init")
        def send_heartbeat(self) -> None: log.append("hb")
        def start_section(self, s: str) -> None: log.append("+" + s)
        def end_section(self, s: str) -> None: log.append("-" + s)
        def shutdown_workload_monitoring(self) -> None: log.append("bye")

    fake = types.ModuleType("nvidia_resiliency_ext.fault_tolerance")
    fake.RankMonitorClient = Client  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nvidia_resiliency_ext", types.ModuleType("nvidia_resiliency_ext"))
    monkeypatch.setitem(sys.modules, "nvidia_resiliency_ext.fault_tolerance", fake)
    monkeypatch.setenv(ft_heartbeat.FT_SOCKET_ENV, "/nonexistent/rmon.socket")
    monkeypatch.setenv(ft_heartbeat.SECTIONS_ENV, "1")
    monkeypatch.setattr(ft_heartbeat.atexit, "register", lambda fn: fn)
    tel = ft_heartbeat.attach(FakeTelemetry())
    tel.phase = "restore"
    tel.phase = "start"  # restored before the first step
    tel.phase = "step"
    tel.send("step", step=0)
    tel.phase = "checkpoint"
    tel.phase = "step"
    tel.phase = "step"  # set again on every step: no change, no message
    tel.send("step", step=1)
    tel.close()
    assert log == ["init", "+setup", "-setup", "+busy", "-busy", "+setup", "-setup", "+step", "hb", "-step",
                   "+step", "-step", "+busy", "-busy", "+step", "hb", "-step", "+step", "bye"]
    assert isinstance(tel, FakeTelemetry) and vars(tel)["phase"] == "step" and tel.closed


# ---- end to end through the benchmark harness ------------------------------------------------------------
def small_cfg(chaos: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's config at 2 nodes x 1 rank, 12 steps, a checkpoint every 4."""
    from benchmarks.bench_goodput_vs_torchrun import BASE
    return dict(BASE, chaos=chaos,
                cluster=dict(BASE["cluster"], nodes=2, ranks_per_node=1, spare_nodes=0),
                train=dict(BASE["train"], steps=12, step_sleep_s=0.05),
                checkpoint=dict(BASE["checkpoint"], every_steps=4),
                health=dict(BASE["health"], collective_timeout_s=600.0))


def harness_args(ft_mode: str = "heartbeats") -> argparse.Namespace:
    return argparse.Namespace(max_restarts=2, hang_cap_s=float("inf"), replace_delay_s=0.0, timeout_s=300.0,
                              ft_mode=ft_mode)


@needs_ft
@pytest.mark.slow
def test_ft_launcher_runs_a_clean_job(tmp_path: Path) -> None:
    from benchmarks.goodput_launchers import run_elastic
    cfg = small_cfg([])  # ft's timeouts are our hang timeout: 3 s read a loaded CI machine's pause as a hang
    cfg["health"] = dict(cfg["health"], hang_timeout_s=30.0)  # this test is the clean path, not detection
    r = run_elastic("ft_launcher", cfg, tmp_path, "clean", harness_args())
    assert r["completed"], r
    assert r["steps_kept"] == 12 and r["recomputed_steps"] == 0 and r["detected"] == "-"


@needs_ft
@pytest.mark.slow
@pytest.mark.parametrize("mode,mark", [("heartbeats", "Did not get subsequent heartbeat"),
                                       ("sections", "Section 'step' has been open for")])
def test_ft_launcher_detects_a_hang(tmp_path: Path, mode: str, mark: str) -> None:
    """Rank 1 hangs at step 6; its peer blocks in the all-reduce. The gloo timeout is 600 s, so a run that
    completes well before it was rescued by ft's own timeout (3 s: heartbeat, or the step section), which
    the rank monitor's log names."""
    from benchmarks.goodput_launchers import run_elastic
    r = run_elastic("ft_launcher", small_cfg([{"fault": "hang", "step": 6, "rank": 1}]), tmp_path, "hang",
                    harness_args(mode))
    assert r["completed"], r
    assert r["detected"] == f"hang (ft {mode} timeout)", r
    logs = "".join(f.read_text(errors="replace") for f in Path(r["logs"]).glob("agent*.log"))
    assert mark in logs  # steps did report, then stopped
    assert r["capped"] == 0 and r["wall_s"] < 300
    assert r["steps_kept"] == 12 and r["recomputed_steps"] >= 1  # resumed from the step-4 checkpoint
