"""Step time on one GPU with and without the supervisor: the same one-rank config under
``orchestrator submit`` (node agent, telemetry, watchdogs) and as a bare ``trainer.rank_main`` process
whose step datagrams this script collects itself. Median of rank 0's ``step_time`` after a warm-up;
the runs are interleaved ``--repeats`` times so a busy machine affects both alike.

On a machine without CUDA it runs on the CPU (the smoke test does), with ``--device cpu``.

Usage: .venv/bin/python benchmarks/bench_gpu_step.py [--steps 200] [--repeats 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.goodput_launchers import PY, child_env, prepare_run_dir, run_orchestrator  # noqa: E402
from benchmarks.common import REPO, machine, median, save_json, table  # noqa: E402

WARMUP = 5


def config(steps: int, device: str, d_model: int) -> dict[str, Any]:
    """One rank, a model big enough that the GPU has work, checkpoints rare enough not to dominate."""
    return {"name": "gpustep", "cluster": {"backend": "local", "nodes": 1, "ranks_per_node": 1, "device": device},
            "model": {"d_model": d_model, "n_layers": 4, "n_heads": 8, "seq_len": 256},
            "data": {"max_bytes": 2_000_000},
            "train": {"steps": steps, "global_batch": 16, "lr": 3e-4, "precision": "bf16" if device == "cuda" else "fp32",
                      "schedule": {"warmup_steps": 10}},
            "checkpoint": {"every_steps": max(steps // 2, 1), "keep": 2},
            "health": {"probes": ["node"]}, "metrics": {"enabled": False}}


def step_times(rows: list[dict[str, Any]]) -> list[float]:
    return [float(r["step_time"]) for r in rows if r.get("step") is not None and int(r["step"]) >= WARMUP
            and not r.get("skipped")]


def with_supervisor(cfg: dict[str, Any], work: Path, name: str) -> list[float]:
    run_orchestrator(cfg, work, name)
    lines = (work / name / "metrics.jsonl").read_text().splitlines()
    return step_times([json.loads(line) for line in lines if line.strip()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def without_supervisor(cfg: dict[str, Any], work: Path, name: str, timeout_s: float = 600.0) -> list[float]:
    """The trainer alone: one process, its step datagrams received here (no agent, no watchdog)."""
    from trainer.telemetry_auth import create_or_load_key
    from orchestrator.telemetry_server import TelemetryServer
    run_dir = work / name
    prepare_run_dir(cfg, run_dir)
    srv = TelemetryServer(create_or_load_key(run_dir))
    env = child_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": str(_free_port()), "ORCH_RUN_DIR": str(run_dir),
                     "ORCH_TELEMETRY_ADDR": srv.address, "ORCH_TELEMETRY_KEY_FILE": str(run_dir / "telemetry.key")})
    rows: list[dict[str, Any]] = []
    with open(run_dir / "rank0.log", "wb") as log:
        proc = subprocess.Popen([PY, "-m", "trainer.rank_main"], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            rows += [m for m in srv.drain() if m.get("type") == "step"]
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    rows += [m for m in srv.drain() if m.get("type") == "step"]
    srv.close()
    if proc.returncode != 0:
        raise RuntimeError(f"bare trainer exited {proc.returncode}; see {run_dir / 'rank0.log'}")
    return step_times(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    print("machine:", machine(), flush=True)
    cfg = config(a.steps, a.device, a.d_model)
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpustep-") as tmp:
        for i in range(a.repeats):
            for mode, fn in (("supervisor", with_supervisor), ("bare", without_supervisor)):
                times = fn(cfg, Path(tmp), f"{mode}-{i}")
                out.append({"mode": mode, "repeat": i, "steps": len(times), "median_step_s": median(times)})
                print(out[-1], flush=True)
    med = {m: median(r["median_step_s"] for r in out if r["mode"] == m) for m in ("supervisor", "bare")}
    print(table(out))
    print(f"median step: supervisor {med['supervisor']:.5f}s, bare {med['bare']:.5f}s, "
          f"overhead {100 * (med['supervisor'] / med['bare'] - 1):+.2f}%")
    save_json(a.json, "gpu_step", {"args": vars(a), "rows": out, "median": med})
    return 0


if __name__ == "__main__":
    sys.exit(main())
