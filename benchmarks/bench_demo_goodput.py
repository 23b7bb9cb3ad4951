"""The all-faults demo's goodput with and without the memory tier, interleaved, with the ledger.

Runs ``examples/local.yaml`` (every fault once) as ``orchestrator submit`` would, alternately storage
only (the default) and with ``checkpoint.memory.enabled`` and ``every_steps: auto``, ``--repeats`` times
each, and prints per run and per variant (median [min-max]) the goodput, wall time, the ledger's lost
time by cause, steps lost per relaunch and the first start-up, with the load average before and after
each run; and per fault kind, from the chaos injector's ground truth (``injected_t``), the detection
latency and the time to the first step applied after the decision. Run under ``flock /tmp/bench.lock``.
Usage: python benchmarks/bench_demo_goodput.py [--repeats 3] [--variants storage] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "storage only": [],
    "+ memory tier (auto)": ["--set", "checkpoint.memory.enabled=true",
                             "--set", "checkpoint.memory.every_steps=auto"],
}
LOST = ["detection", "restart", "recomputation", "checkpoint", "straggler", "replay", "other"]


def submit(config: Path, run_dir: Path, extra: list[str]) -> float:
    """One run in its own process (as a user would start it); returns its wall time."""
    cmd = [sys.executable, "-c", "import sys; from orchestrator.cli import main; sys.exit(main(sys.argv[1:]))",
           "submit", str(config), "--run-dir", str(run_dir), "--quiet", "--set", "metrics.enabled=false", *extra]
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    subprocess.run(cmd, env=env, cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def summary(run_dir: Path) -> dict[str, Any]:
    """Goodput, ledger and recovery figures from the run's status.json and journal."""
    status = json.loads((run_dir / "status.json").read_text())
    journal = [json.loads(l) for l in (run_dir / "journal.jsonl").read_text().splitlines() if l.strip()]
    relaunch_lost = [f"{f['kind']}:{f['lost_steps']}" for f in status["faults"]
                     if f.get("action") in ("relaunch", "exclude_node", "shrink")]
    started = [e for e in journal if e["event"] == "ranks_started"]
    launched = [e for e in journal if e["event"] == "run_start"]
    first_start = round(started[0]["t"] - launched[0]["t"], 1) if started and launched else None
    row = {"state": status["state"], "step": status["step"], "goodput": status["goodput"],
           "wall_s": status["wall_s"], "productive_s": status["productive_s"],
           "predicted": status.get("predicted_goodput"), "intervals": status.get("intervals"),
           "lost_per_relaunch": relaunch_lost, "first_start_s": first_start,
           "eval_loss": status.get("eval_loss"), "median_step_s": status.get("step_time_median_s")}
    row |= {f"lost_{k}": status["lost"].get(k) for k in LOST}  # other: since #16
    row["not_injected"] = [f["kind"] for f in status["faults"] if not f.get("injected_t")]  # false alarms
    return row


def per_fault(run_dir: Path) -> list[dict[str, Any]]:
    """Each injected fault: detected after (s, from the injection) and fault -> first good step (s, the
    first step applied after the decision, from the injection; None for an alert-only straggler)."""
    status = json.loads((run_dir / "status.json").read_text())
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    out = []
    for f in status["faults"]:
        inj, det = f.get("injected_t"), f.get("detected_t")
        after = [m for m in rows if m.get("t") and det and m["t"] > det and not m.get("skipped")]
        good = round(after[0]["t"] - inj, 2) if after and inj and f["kind"] != "straggler" else None
        out.append({"kind": f["kind"], "step": f["step"], "injected": inj is not None,
                    "detected_after_s": f.get("detected_after_s"), "first_good_step_s": good,
                    "action": f.get("action"), "lost_steps": f.get("lost_steps")})
    return out


def health_settings(config: Path) -> dict[str, Any]:
    """The detector limits the demo runs with (what a false hang or a lost node is judged against)."""
    from orchestrator.config_load import load_config
    h = load_config(config).health
    return {"hang_timeout_s": h.hang_timeout_s, "hang_step_multiple": h.hang_step_multiple,
            "agent_timeout_s": h.agent_timeout, "heartbeat_interval_s": h.heartbeat_interval_s}


def spread(xs: list[float], f: str = ".3f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):{f}} [{min(xs):{f}}-{max(xs):{f}}]"


def print_fault_table(rows: list[dict[str, Any]], variants: dict[str, list[str]]) -> None:
    """Per variant and injected fault kind: median [min-max] over the repeats."""
    print("| variant | fault | step | detected after injection s | injection -> first good step s | action "
          "| steps lost | n |")
    print("|---" * 8 + "|")
    for name in variants:
        faults = [f for r in rows if r["variant"] == name for f in r["faults"] if f["injected"]]
        for kind in dict.fromkeys(f["kind"] for f in faults):
            mine = [f for f in faults if f["kind"] == kind]
            actions = ",".join(sorted({str(f["action"]) for f in mine}))
            print(f"| {name} | {kind} | {','.join(sorted({str(f['step']) for f in mine}))} | "
                  f"{spread([f['detected_after_s'] for f in mine], '.2f')} | "
                  f"{spread([f['first_good_step_s'] for f in mine], '.2f')} | {actions} | "
                  f"{spread([f['lost_steps'] for f in mine], '.0f')} | {len(mine)} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "examples/local.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", help="keep the run directories here")
    ap.add_argument("--variants", default="storage,memory", help="storage (the default config) and/or memory")
    ap.add_argument("--json", help="write every run's row here (one JSON document)")
    args = ap.parse_args()
    names = list(VARIANTS)
    chosen = {n: VARIANTS[n] for key, n in zip(("storage", "memory"), names) if key in args.variants.split(",")}
    work = Path(args.keep or tempfile.mkdtemp(prefix="demo-goodput-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    print(f"health settings: {health_settings(Path(args.config))}", flush=True)
    for rep in range(args.repeats):
        for i, (name, extra) in enumerate(chosen.items()):
            load0 = os.getloadavg()[0]
            submit(Path(args.config), work / f"r{rep}-v{i}", extra)
            row = {"variant": name, "repeat": rep, "load_before": round(load0, 1),
                   "load_after": round(os.getloadavg()[0], 1)} | summary(work / f"r{rep}-v{i}")
            row["faults"] = per_fault(work / f"r{rep}-v{i}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("faults nobody injected (false alarms), per run:",
          {f"{r['variant']} #{r['repeat']}": r["not_injected"] for r in rows})
    cols = ["goodput", "wall_s"] + [f"lost_{k}" for k in LOST] + ["first_start_s", "median_step_s", "eval_loss"]
    print("| variant | " + " | ".join(cols) + " | steps lost per relaunch | load |")
    print("|---" * (len(cols) + 3) + "|")
    for name in chosen:
        mine = [r for r in rows if r["variant"] == name]
        cells = [spread([r[c] for r in mine], ".3f" if c in ("goodput", "median_step_s", "eval_loss") else ".1f")
                 for c in cols]
        lost = "; ".join(" ".join(r["lost_per_relaunch"]) for r in mine)
        load = ", ".join(f"{r['load_before']}-{r['load_after']}" for r in mine)
        print(f"| {name} | " + " | ".join(cells) + f" | {lost} | {load} |")
    print_fault_table(rows, chosen)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "rows": rows}, indent=1))
    print(f"runs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
