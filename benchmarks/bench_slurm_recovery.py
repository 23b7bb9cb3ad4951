"""Node failure on the real local Slurm cluster: how long until the supervisor notices, how long the
resubmitted job waits in the queue, how long until its first good step.

    .venv/bin/python benchmarks/bench_slurm_recovery.py [--steps 60] [--kill-at 15]

Kills the slurmd of the job's last node (slurm/local-cluster.sh kill-node) once the run has applied
``--kill-at`` steps, lets the supervisor recover, then revives the node. Splits recovery into
detection (kill -> fault journaled), queue (resubmission -> sacct Start of the new job) and restart
(job start -> first step of the new attempt: interpreter, torch import, rendezvous, checkpoint load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slurm import cmd  # noqa: E402
from tests.conftest import BASE, deep_merge  # noqa: E402

SCRIPT = ROOT / "slurm" / "local-cluster.sh"


def journal(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "journal.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def kill_when(run_dir: Path, step: int, out: dict[str, Any]) -> None:
    """From a thread: wait for ``step``, then kill the last node of the running attempt."""
    while True:
        try:
            if int(json.loads((run_dir / "status.json").read_text()).get("step") or 0) >= step:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    node = [r for r in journal(run_dir) if r["event"] == "launch"][-1]["nodes"][-1]
    out["node"], out["t"] = node, time.time()
    subprocess.run([str(SCRIPT), "kill-node", node], check=True, capture_output=True, timeout=60)


def split(run_dir: Path, kill: dict[str, Any]) -> dict[str, Any]:
    rec = journal(run_dir)
    fault = next(r for r in rec if r["event"] == "fault" and r["t"] >= kill["t"])
    relaunch = [r for r in rec if r["event"] == "launch"][-1]
    sacct = cmd.sacct_job(relaunch["job_id"])
    assert sacct is not None and sacct.start is not None
    started = sacct.start.timestamp()
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = min(r["t"] for r in rows if r["attempt"] == relaunch["attempt"] and not r["skipped"])
    return {"node": kill["node"], "fault_kind": fault["kind"], "fault_node": fault["node"],
            "detection_s": round(fault["t"] - kill["t"], 2),
            "stop_and_resubmit_s": round(relaunch["t"] - fault["t"], 2),
            "queue_s": round(max(0.0, started - relaunch["submitted_t"]), 2),
            "restart_s": round(first - max(started, relaunch["submitted_t"]), 2),
            "total_s": round(first - kill["t"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--kill-at", type=int, default=15)
    a = ap.parse_args()
    from orchestrator.cli import main as cli
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    cfg = deep_merge(BASE, {"name": "bench", "train": {"steps": a.steps},
                            "cluster": {"backend": "slurm", "slurm": {"partition": "main",
                                                                      "poll_interval_s": 0.5}}})
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    kill: dict[str, Any] = {}
    t = threading.Thread(target=kill_when, args=(tmp / "run", a.kill_at, kill), daemon=True)
    t.start()
    try:
        code = cli(["submit", str(tmp / "run.yaml"), "--run-dir", str(tmp / "run"), "--quiet"])
    finally:
        if kill.get("node"):
            subprocess.run([str(SCRIPT), "revive-node", kill["node"]], capture_output=True, timeout=120)
    result = {"exit": code, **split(tmp / "run", kill)}
    print(json.dumps(result, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
