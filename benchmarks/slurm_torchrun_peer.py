"""The common practice as a peer for ``bench_slurm_recovery.py``: ``srun torchrun --max-restarts`` in one
allocation, the same trainer, config and faults.

One job of 2 nodes, one torchrun agent per node (``--nnodes=2``), c10d rendezvous on a store this script
hosts on the cluster network (``is_host=false``, like an external etcd). The peer at its best settings:
``--monitor-interval=0.1``, ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (restarts otherwise read stale peer
addresses: TORCH_NOTES), and each agent started by ``--node-task`` with its node's own address
(``--local-addr``) and gloo interface, as on any multi-homed cluster. torchrun restarts the worker group
(cold: new interpreters, torch imported again) when a worker exits; it has no hang detection of its own,
so a hang ends only at the process group's collective timeout (``health.collective_timeout_s`` = the
``watchdog_s`` argument, 30 s by default: the shortest that keeps a cold restart's staggered arrival at
the first collective, 5-10 s under load here, safely inside it; torch's defaults are 30 min for gloo and
10 min for NCCL), and then the hung worker, which defers SIGTERM to a step boundary like any trainer
that checkpoints on preemption, gets torchrun's 30 s grace before SIGKILL.

Node failure is not run: torchrun cannot recover it inside this allocation. Without a spare node the
rendezvous waits for a second node until ``join_timeout``; with a standby agent on a third node
(``--nnodes=2`` and 3 agents: tried 2026-12-01 on instance ``rs``) the worker group restarted every
~1.5 s without end once the agents fell out of step (after the hang's restart): each round leaves one
agent in the wait list, and a waiting node makes the healthy group restart to admit it.

Latencies start at the same ground truth as ours (chaos markers); ``first_good_step_s`` is the first
step rank 0 reports after the first restart that follows the injection. ``detected_s`` is not measured
(torchrun does not say when it noticed).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench_slurm_recovery import FAULTS, config, summary
from benchmarks.goodput_launchers import prepare_run_dir

PATH = "srun torchrun --max-restarts"
WATCHDOG_S = 30.0
NOT_RUN = {"node_failure": "torchrun cannot recover it in one allocation (module docstring)"}


def _script(endpoint: str, max_restarts: int) -> str:
    argv = [sys.executable, "-m", "benchmarks.slurm_torchrun_peer", "--node-task", endpoint, str(max_restarts)]
    return "#!/bin/bash\nsrun --no-kill --ntasks-per-node=1 " + " ".join(shlex.quote(a) for a in argv) + "\n"


def node_task(endpoint: str, max_restarts: int) -> None:
    """On each node (an srun task): torchrun with this node's address and gloo interface, then exec."""
    from slurm.node_addr import link_env, split_host
    env = link_env(split_host(endpoint))
    os.environ.update(env)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
            f"--max-restarts={max_restarts}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            "--rdzv-id=peer", "--rdzv-conf=is_host=false,join_timeout=600", "--monitor-interval=0.1"]
    if "ORCH_NODE_ADDR" in env:
        argv.append(f"--local-addr={env['ORCH_NODE_ADDR']}")
    os.execv(sys.executable, argv + ["--module", "trainer.rank_main"])


def store_host() -> str:
    """The address the nodes reach this host on: the local cluster's controller address when it has one."""
    from orchestrator.telemetry_server import cluster_address
    from slurm.local_cluster import local_cluster
    lc = local_cluster()
    return lc.controller_addr if lc is not None and lc.controller_addr else cluster_address()


def run_peer(steps: int, work: Path, watchdog_s: float = WATCHDOG_S, timeout_s: float = 900) -> dict[str, Any]:
    from torch.distributed import TCPStore
    from trainer.telemetry_auth import create_or_load_key
    from orchestrator.telemetry_server import TelemetryServer
    cfg = config("resubmit", steps)
    cfg["health"]["collective_timeout_s"] = watchdog_s
    run_dir = work / "run"
    work.mkdir(parents=True, exist_ok=True)
    prepare_run_dir(cfg, run_dir)
    host = store_host()
    srv = TelemetryServer(create_or_load_key(run_dir), host)
    store = TCPStore(host, 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    (work / "peer.sh").write_text(_script(f"{host}:{store.port}", 5))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", ORCH_RUN_DIR=str(run_dir), ORCH_TELEMETRY_ADDR=srv.address,
               ORCH_TELEMETRY_KEY_FILE=str(run_dir / "telemetry.key"))
    out = subprocess.run(["sbatch", "--parsable", "--no-kill", "--no-requeue", "--nodes=2", "--partition=main",
                          "--job-name=peer", f"--output={work}/slurm-%j.out", str(work / "peer.sh")],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    job_id = out.stdout.strip().split(";")[0]
    load0 = os.getloadavg()[0]
    try:
        steps_rows, started = _drive(srv, steps, timeout_s)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
        srv.close()
        del store
    completed = bool(steps_rows) and max(r["step"] for r in steps_rows) == steps - 1
    return {"path": PATH, "job_id": job_id, "watchdog_s": watchdog_s, "exit": 0 if completed else 1,
            "completed": completed, "memory_tier": False, "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "faults": _measure(run_dir, steps_rows, started)}


def _drive(srv: Any, steps: int, timeout_s: float) -> tuple[list[dict[str, Any]], list[float]]:
    """Collect rank 0's steps and every rank 0 start until rank 0 is done."""
    rows: list[dict[str, Any]] = []
    started: list[float] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        select.select([srv.fileno()], [], [], 0.1)
        for m in srv.drain():
            if m["rank"] == 0 and m["type"] == "step" and not m.get("skipped"):
                rows.append({"step": int(m["step"]), "t": time.time()})
            elif m["rank"] == 0 and m["type"] == "event" and m.get("kind") == "started":
                started.append(time.time())
            elif m["rank"] == 0 and m["type"] == "event" and m.get("kind") == "done":
                return rows, started
    return rows, started


def _measure(run_dir: Path, rows: list[dict[str, Any]], started: list[float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for marker in sorted((run_dir / "chaos").glob("fired-*")):
        rec = json.loads(marker.read_text())
        name, t = FAULTS[int(rec["index"])], float(rec["t"])
        restart = next((s for s in started if s > t), None)
        good = next((r["t"] for r in rows if restart is not None and r["t"] > restart), None)
        out[name] = {"detected_s": None, "first_good_step_s": None if good is None else round(good - t, 3)}
    return out


def peer_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per fault over the peer's runs, in the rows' format of bench_slurm_recovery."""
    runs = [r for r in runs if r["path"] == PATH]
    if not runs:
        return []
    repeats = len(runs)
    rows = []
    for fault in FAULTS:
        vals = [r["faults"][fault]["first_good_step_s"] for r in runs
                if r["faults"].get(fault, {}).get("first_good_step_s") is not None]
        rows.append({"fault": fault, "path": PATH, "repeats": repeats, "detected_s": summary([]),
                     "first_good_step_s": summary(vals), "watchdog_s": runs[0]["watchdog_s"],
                     "note": NOT_RUN.get(fault),
                     "load_1m": [r["load_1m"] for r in runs]})
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--node-task"]:
        node_task(sys.argv[2], int(sys.argv[3]))
    else:  # one run, for a look: WORK_DIR
        print(yaml.safe_dump(peer_rows([run_peer(45, Path(sys.argv[1]))])))
