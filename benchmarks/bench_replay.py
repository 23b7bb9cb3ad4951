"""Replay verdicts: time from detection to verdict, and goodput of a run with a faulty-GPU node (chaos
``sdc``) handled by replay (hardware verdict: exclude, relaunch on a spare) against the same run with
skip-only handling (policy.replay.enabled: false: every corrupted step is skipped, the node stays).

Skip-only never gets rid of the node, so its run is capped (``--cap-s``) and interrupted (Ctrl-C, as a
user would): its goodput is productive time over wall time at that point, and the steps it reached are
shown. Each mode runs ``--repeats`` times; figures are median [min-max]. Machine load is printed: a run
on a loaded machine is not a result.

Usage: .venv/bin/python benchmarks/bench_replay.py [--repeats 3] [--steps 40] [--cap-s 240] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, machine, median, save_json  # noqa: E402


def config(steps: int, sdc_step: int, replay: bool) -> dict[str, Any]:
    return {
        "name": "bench-replay",
        "cluster": {"backend": "local", "nodes": 2, "ranks_per_node": 2, "spare_nodes": 1},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "seq_len": 32},
        "data": {"max_bytes": 400_000},
        "train": {"steps": steps, "global_batch": 8, "lr": 0.003, "schedule": {"warmup_steps": 5}},
        "checkpoint": {"every_steps": 10, "keep": 3},
        "health": {"heartbeat_interval_s": 0.25, "hang_timeout_s": 5.0, "probes": ["node"]},
        "policy": {"restart_budget": 4, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
                   "spike": {"window": 10, "k": 4.0, "warmup_steps": 10}, "replay": {"enabled": replay}},
        "metrics": {"enabled": False},
        "chaos": [{"fault": "sdc", "node": 1, "step": sdc_step}],
    }


def run_once(cfg: dict[str, Any], work: Path, name: str, cap_s: float) -> dict[str, Any]:
    """Submit in a child process; past ``cap_s`` interrupt it (SIGINT) and read where it stood."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = work / name
    code = ("import sys; from orchestrator.cli import main; "
            f"sys.exit(main(['submit', {str(path)!r}, '--run-dir', {str(run_dir)!r}, '--quiet']))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, cwd=REPO)
    capped = False
    try:
        proc.wait(timeout=cap_s)
    except subprocess.TimeoutExpired:
        capped = True
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    status = json.loads((run_dir / "status.json").read_text())
    journal = [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines() if x]
    replays = [e for e in journal if e["event"] == "replay"]
    hw = [f for f in status["faults"] if f.get("verdict") == "hardware"]
    return {"goodput": status["goodput"], "step": status["step"], "state": status["state"], "capped": capped,
            "wall_s": status["wall_s"], "replay_lost_s": status["lost"].get("replay", 0.0),
            "skipped": sum(1 for f in status["faults"] if f["action"] == "skip_step"),
            "rollbacks": status["actions"].get("rollback", 0),
            "detect_to_verdict_s": replays[0]["replay_s"] if replays else None,
            "inject_to_verdict_s": hw[0]["detected_after_s"] if hw else None,
            "excluded": status["excluded_nodes"]}


def spread(xs: list[float | None]) -> str:
    v = [x for x in xs if x is not None]
    if not v:
        return "-"
    return f"{median(v):.3g} [{min(v):.3g}-{max(v):.3g}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--sdc-step", type=int, default=25)
    ap.add_argument("--cap-s", type=float, default=240.0, help="wall cap of a skip-only run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print("machine before:", machine())
    results: dict[str, list[dict[str, Any]]] = {"replay": [], "skip-only": []}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for i in range(args.repeats):
            for mode in results:
                cfg = config(args.steps, args.sdc_step, mode == "replay")
                r = run_once(cfg, Path(tmp), f"{mode}-{i}", args.cap_s)
                results[mode].append(r)
                print(mode, i, r, flush=True)
    print("machine after:", machine())
    print("| handling | goodput | steps reached | completed | detection → verdict (s) | injection → verdict (s) "
          "| replay lost (s) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, rs in results.items():
        done = sum(1 for r in rs if r["state"] == "COMPLETED")
        print(f"| {mode} | {spread([r['goodput'] for r in rs])} | {spread([r['step'] for r in rs])} | "
              f"{done}/{len(rs)} | {spread([r['detect_to_verdict_s'] for r in rs])} | "
              f"{spread([r['inject_to_verdict_s'] for r in rs])} | {spread([r['replay_lost_s'] for r in rs])} | "
              f"{spread([r['wall_s'] for r in rs])} |")
    save_json(args.json, "replay", {"args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
