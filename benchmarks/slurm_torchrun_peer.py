"""The common practice as a peer for ``bench_slurm_recovery.py``: ``srun torchrun --max-restarts`` in one
allocation, the same trainer, config and faults.

One job of 3 nodes (``--no-kill``), one torchrun agent per node with ``--nnodes=2``: the third agent is
torch elastic's standby (it joins the next rendezvous round when a node is gone). c10d rendezvous on a
store this script hosts (``is_host=false``, like an external etcd, so losing a node does not take the
rendezvous with it). torchrun restarts the worker group (cold: new interpreters, torch imported again)
when a worker exits; it has no hang detection of its own, so a hang and a frozen node end only at the
process group's collective timeout (``health.collective_timeout_s``, set to WATCHDOG_S here: a short
watchdog, kinder to the peer than the usual 10-30 min). Latencies start at the same ground truth as ours
(chaos markers; a marker written just before the node is killed); ``first_good_step_s`` is the first
step rank 0 reports after the first restart that follows the injection. ``detected_s`` is not measured
(torchrun does not say when it noticed).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench_slurm_recovery import FAULTS, NODE_FAILURE_AT, SCRIPT, config, summary, write_marker
from benchmarks.goodput_launchers import prepare_run_dir

PATH = "srun torchrun --max-restarts"
WATCHDOG_S = 60.0


def _script(store_port: int, max_restarts: int) -> str:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
            f"--max-restarts={max_restarts}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{store_port}",
            "--rdzv-id=peer", "--rdzv-conf=is_host=false,join_timeout=600", "--monitor-interval=0.1",
            "--module", "trainer.rank_main"]
    return "#!/bin/bash\nsrun --no-kill --ntasks-per-node=1 " + " ".join(argv) + "\n"


def run_peer(steps: int, work: Path, timeout_s: float = 900) -> dict[str, Any]:
    from torch.distributed import TCPStore
    from trainer.telemetry_auth import create_or_load_key
    from orchestrator.telemetry_server import TelemetryServer
    cfg = config("resubmit", steps)
    cfg["health"]["collective_timeout_s"] = WATCHDOG_S
    run_dir = work / "run"
    work.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(cfg, run_dir)
    srv = TelemetryServer(create_or_load_key(run_dir), "127.0.0.1")
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    (work / "peer.sh").write_text(_script(store.port, 5))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", ORCH_RUN_DIR=str(run_dir), ORCH_TELEMETRY_ADDR=srv.address,
               ORCH_TELEMETRY_KEY_FILE=str(run_dir / "telemetry.key"))
    out = subprocess.run(["sbatch", "--parsable", "--no-kill", "--no-requeue", "--nodes=3", "--partition=main",
                          "--job-name=peer", f"--output={work}/slurm-%j.out", str(work / "peer.sh")],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    job_id = out.stdout.strip().split(";")[0]
    load0 = os.getloadavg()[0]
    killed: str | None = None
    try:
        steps_rows, started, killed = _drive(srv, run_dir, steps, timeout_s)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
        if killed:
            subprocess.run([str(SCRIPT), "revive-node", killed], capture_output=True, timeout=180)
        srv.close()
        del store
    return {"path": PATH, "job_id": job_id, "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "faults": _measure(run_dir, steps_rows, started), "completed": bool(steps_rows)
            and max(r["step"] for r in steps_rows) == steps - 1}


def _drive(srv: Any, run_dir: Path, steps: int, timeout_s: float
           ) -> tuple[list[dict[str, Any]], list[float], str | None]:
    """Collect rank 0's steps and every rank 0 start; kill rank 2's node at the benchmark's moment."""
    rows: list[dict[str, Any]] = []
    started: list[float] = []
    node_of: dict[int, str] = {}
    killed: str | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        select.select([srv.fileno()], [], [], 0.1)
        for m in srv.drain():
            node_of[int(m["rank"])] = str(m.get("node"))
            if m["rank"] == 0 and m["type"] == "step" and not m.get("skipped"):
                rows.append({"step": int(m["step"]), "t": time.time()})
            elif m["rank"] == 0 and m["type"] == "event" and m.get("kind") == "started":
                started.append(time.time())
            elif m["rank"] == 0 and m["type"] == "event" and m.get("kind") == "done":
                return rows, started, killed
        launches, at = NODE_FAILURE_AT
        if killed is None and len(started) >= launches and rows and rows[-1]["step"] >= at and 2 in node_of:
            killed = node_of[2]
            write_marker(run_dir, len(FAULTS) - 1, rows[-1]["step"], 1)
            subprocess.run([str(SCRIPT), "kill-node", killed], check=True, capture_output=True, timeout=60)
    return rows, started, killed


def _measure(run_dir: Path, rows: list[dict[str, Any]], started: list[float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for marker in sorted((run_dir / "chaos").glob("fired-*")):
        rec = json.loads(marker.read_text())
        name, t = FAULTS[int(rec["index"])], float(rec["t"])
        restart = next((s for s in started if s > t), None)
        good = next((r["t"] for r in rows if restart is not None and r["t"] > restart), None)
        out[name] = {"detected_s": None, "first_good_step_s": None if good is None else round(good - t, 3)}
    return out


def peer_rows(repeats: int, steps: int, work: Path) -> list[dict[str, Any]]:
    runs = []
    for i in range(repeats):
        run = run_peer(steps, work / f"r{i}")
        runs.append(run)
        print(json.dumps(run), flush=True)
    rows = []
    for fault in FAULTS:
        vals = [r["faults"][fault]["first_good_step_s"] for r in runs
                if r["faults"].get(fault, {}).get("first_good_step_s") is not None]
        rows.append({"fault": fault, "path": PATH, "repeats": repeats, "detected_s": summary([]),
                     "first_good_step_s": summary(vals), "watchdog_s": WATCHDOG_S,
                     "load_1m": [r["load_1m"] for r in runs]})
    return rows


if __name__ == "__main__":
    print(yaml.safe_dump(peer_rows(1, 45, Path(sys.argv[1]))))
