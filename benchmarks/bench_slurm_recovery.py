"""Recovery on the real local Slurm cluster: in-allocation warm agents against one sbatch per attempt.

    .venv/bin/python benchmarks/bench_slurm_recovery.py --repeats 3 --json FILE
        [--paths in_allocation,in_allocation_memtier,resubmit] [--peer | --no-peer] [--peer-watchdog S]
        [--memory-tier]

Each repeat runs the same config once per path (``cluster.slurm.recovery``), with three faults in the
run: a rank crash (chaos, step 8), a hang (chaos, step 20) and a node failure (the node's slurmd killed
and its processes frozen, ``slurm/local-cluster.sh kill-node``, once 3 attempts ran and step 32 was
reached; the node is revived after the run). Every latency starts at the fault's injection ground truth:
the chaos marker the rank fsyncs before acting, or for the node failure a marker this script fsyncs in
the same format (``RUN_DIR/chaos/fired-N``) just before the kill, so the supervisor pairs it too.

Paths: ``in_allocation`` and ``resubmit`` restore from storage; ``in_allocation_memtier`` is the
in-allocation path with the memory tier on (``--memory-tier`` turns it on for every path instead), so one
run compares all three at the same load. Every path has the same detector settings, the defaults: a node
agent counts as lost after 4 times its own largest recent heartbeat gap (``health.agent_gap_multiple``),
at least 2 s, at most 5 s (``health.agent_timeout_s``, as tests/test_slurm_inalloc.py uses: a fixed 2 s
recorded node losses that never happened under load); each fault keeps the journal's ``detail`` (the
limit used).

``detected_s``: injection -> the fault journaled; ``first_good_step_s``: injection -> the first applied
step of the attempt that followed; ``phases``: where that time went (detection, relaunch, fork, the
rank's start, process group, build, restore, first step; medians in the rows), from the journal and the
ranks' start-up marks. One row per (fault, path), median [min-max] over the repeats, plus the
peer (``--peer``, one run per repeat, after the paths unless ``--paths`` places ``peer``): ``srun torchrun --max-restarts`` in one allocation
(``benchmarks/slurm_torchrun_peer.py``; its hang ends at ``--peer-watchdog``, the collective timeout).
The JSON is rewritten after every run.
The machine's load average is recorded with every run: a number measured under load is not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

from tests.conftest import BASE, deep_merge  # noqa: E402

SCRIPT = ROOT / "slurm" / "local-cluster.sh"
FAULTS = ("rank_crash", "hang", "node_failure")
PATHS = ("in_allocation", "resubmit")
MEMTIER = "in_allocation_memtier"  # the in-allocation path with the memory tier on
AGENT_TIMEOUT_S = 5.0
NODE_FAILURE_AT = (3, 32)  # (launches made, step reached) before the slurmd is killed


def config(path: str, steps: int, memory_tier: bool = False) -> dict[str, Any]:
    if path == MEMTIER:
        path, memory_tier = "in_allocation", True
    return deep_merge(BASE, {
        "name": f"bench-{path}", "train": {"steps": steps},
        "checkpoint": {"every_steps": 5, "memory": {"enabled": memory_tier}},
        "cluster": {"backend": "slurm", "spare_nodes": 2,
                    "slurm": {"partition": "main", "poll_interval_s": 0.5, "recovery": path}},
        "health": {"startup_timeout_s": 300, "agent_timeout_s": AGENT_TIMEOUT_S, "lemon_nodes": False},  # runs independent
        "chaos": [{"fault": "rank_crash", "step": 8, "rank": 1}, {"fault": "hang", "step": 20, "rank": 2}]})


def journal(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def current_step(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "status.json").read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0


def write_marker(run_dir: Path, index: int, step: int, node_index: int) -> None:
    """The node failure's ground truth, in the chaos injector's format, fsynced before the kill."""
    path = run_dir / "chaos" / f"fired-{index}"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"index": index, "fault": "node_failure", "step": step, "rank": None, "node_index": node_index,
           "t": time.time(), "mono": time.monotonic()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, (json.dumps(rec) + "\n").encode())
    os.fsync(fd)
    os.close(fd)


def kill_node_later(run_dir: Path, index: int, out: dict[str, Any], timeout_s: float = 900) -> None:
    """From a thread: once the run made enough launches and steps, kill the last node of its attempt."""
    launches, step = NODE_FAILURE_AT
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ls = [r for r in journal(run_dir) if r["event"] == "launch"]
        if len(ls) >= launches and current_step(run_dir) >= step:
            node = ls[-1]["nodes"][-1]
            out["node"] = node
            write_marker(run_dir, index, current_step(run_dir), len(ls[-1]["nodes"]) - 1)
            subprocess.run([str(SCRIPT), "kill-node", node], check=True, capture_output=True, timeout=60)
            return
        time.sleep(0.05)


def measure(run_dir: Path) -> dict[str, dict[str, float | None]]:
    """fault -> detected_s, first_good_step_s, from the journal's ground-truth-paired fault records."""
    rec = journal(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    launches = [r for r in rec if r["event"] == "launch"]
    out: dict[str, dict[str, float | None]] = {}
    for f in (r for r in rec if r["event"] == "fault" and isinstance(r.get("injected"), dict)):
        name = FAULTS[int(f["injected"]["index"])]
        if name in out:
            continue
        nxt = next((x for x in launches if x["t"] >= f["t"]), None)
        good = [row["t"] for row in rows if nxt is not None and row["attempt"] == nxt["attempt"]
                and not row["skipped"]]
        out[name] = {"detected_s": round(f["detected_t"] - f["injected_t"], 3),
                     "first_good_step_s": round(min(good) - f["injected_t"], 3) if good else None,
                     "kind": f["kind"], "jobs": len({x.get("job_id") for x in launches}),
                     "detail": str((f.get("evidence") or {}).get("detail", ""))[:240],
                     "phases": phases(f, nxt, rec, min(good) if good else None)}
    return out


def phases(fault: dict[str, Any], launch: dict[str, Any] | None, rec: list[dict[str, Any]],
           first_good: float | None) -> dict[str, float]:
    """Where the time from injection to the first good step went, from the journal and the start-up marks
    the first reporting rank sent (trainer.rank_main): seconds spent in each span, in order."""
    if launch is None:
        return {}
    started = next((r for r in rec if r["event"] == "ranks_started" and r["attempt"] == launch["attempt"]), {})
    marks = started.get("startup") or {}
    points = [("detect", fault["detected_t"]), ("relaunch", launch["t"]), ("fork", marks.get("forked")),
              ("rank_start", marks.get("main")), ("process_group", marks.get("process_group")),
              ("build", marks.get("built")), ("restore", marks.get("restored")), ("first_step", first_good)]
    out, prev = {}, fault["injected_t"]
    for name, t in points:
        if t:
            out[name] = round(float(t) - prev, 3)
            prev = float(t)
    return out


def run_once(path: str, steps: int, work: Path, memory_tier: bool = False) -> dict[str, Any]:
    from orchestrator.cli import main as cli
    work.mkdir(parents=True, exist_ok=True)
    cfg_path, run_dir = work / f"{path}.yaml", work / path
    cfg_path.write_text(yaml.safe_dump(config(path, steps, memory_tier)))
    killed: dict[str, Any] = {}
    t = threading.Thread(target=kill_node_later, args=(run_dir, len(FAULTS) - 1, killed), daemon=True)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    t.start()
    try:
        code = cli(["submit", str(cfg_path), "--run-dir", str(run_dir), "--quiet"])
    finally:
        t.join(timeout=1)
        if killed.get("node"):
            subprocess.run([str(SCRIPT), "revive-node", killed["node"]], capture_output=True, timeout=180)
    return {"path": path, "memory_tier": memory_tier or path == MEMTIER, "exit": code, "wall_s": round(time.time() - t0, 1), "run_dir": str(run_dir),
            "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "faults": measure(run_dir)}


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None, "values": []}
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "values": values}


def rows_from(runs: list[dict[str, Any]], paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for fault in FAULTS:
        for path in paths:
            mine = [r["faults"].get(fault, {}) for r in runs if r["path"] == path]
            rows.append({"fault": fault, "path": path, "repeats": len(mine),
                         "detected_s": summary([m["detected_s"] for m in mine if m.get("detected_s") is not None]),
                         "first_good_step_s": summary([m["first_good_step_s"] for m in mine
                                                       if m.get("first_good_step_s") is not None]),
                         "phases_median": {k: round(statistics.median(v), 3) for k, v in spans(mine).items()}})
    return rows


def spans(faults: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for f in faults:
        for k, v in (f.get("phases") or {}).items():
            out.setdefault(k, []).append(v)
    return out


def fmt(s: dict[str, Any]) -> str:
    return "-" if s["median"] is None else f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| fault | path | detected (s) | first good step (s) | n |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['path']} | {fmt(r['detected_s'])} | {fmt(r['first_good_step_s'])} "
                     f"| {len(r['first_good_step_s']['values'])}/{r['repeats']} |")
    by = {(r["fault"], r["path"]): r["first_good_step_s"]["median"] for r in rows}
    for fault in FAULTS:
        for fast in ("in_allocation", MEMTIER):
            for slow in ("resubmit", "srun torchrun --max-restarts"):
                a, b = by.get((fault, fast)), by.get((fault, slow))
                if a and b:
                    lines.append(f"\n{fault}: {slow} / {fast} = {b / a:.1f}x (first good step, medians)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=45)
    ap.add_argument("--paths", default=",".join(PATHS), help=f"of {', '.join(PATHS + (MEMTIER,))}, and peer")
    ap.add_argument("--json", type=Path, help="write the rows and every run here")
    ap.add_argument("--memory-tier", action="store_true",
                    help="checkpoint.memory.enabled: restarts restore from the node's RAM copy when it has one")
    ap.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                    help="also run srun torchrun --max-restarts in one allocation, once per repeat")
    ap.add_argument("--peer-watchdog", type=float, default=30.0,
                    help="the peer's collective timeout, s: its only way to end a hang")
    a = ap.parse_args()
    from benchmarks.slurm_torchrun_peer import peer_rows, run_peer
    order = [p for p in a.paths.split(",") if p]  # "peer" may be placed among the paths; else it runs last
    order += ["peer"] if a.peer and "peer" not in order else []
    paths = [p for p in order if p != "peer"]
    work = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    runs: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i in range(a.repeats):  # the peer in every repeat: paths and peer see the same load, a cut run keeps all
        for path in order:
            run = (run_peer(a.steps, work / "peer" / f"r{i}", a.peer_watchdog) if path == "peer"
                   else run_once(path, a.steps, work / f"r{i}", a.memory_tier))
            runs.append(run)
            print(json.dumps(run), flush=True)
            rows = rows_from(runs, paths) + peer_rows(runs)
            if a.json:  # after every run, so a run stopped at the end of its time slot still has its figures
                a.json.write_text(json.dumps({"rows": rows, "runs": runs, "memory_tier": a.memory_tier,
                                              "started": started, "cpus": os.cpu_count(),
                                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    print(table(rows))
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
