"""Recovery benchmark on the local cluster: per fault kind, detection latency (s and steps), time to
recover (fault → first good step after it), steps recomputed, and goodput of the whole run.

Runs the demo config (examples/local.yaml) once per fault kind alone, then with all faults together.
Usage: .venv/bin/python benchmarks/bench_recovery.py [--config examples/local.yaml] [--only all]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from orchestrator.cli import main as cli  # noqa: E402


def run(cfg: dict[str, Any], workdir: Path, name: str) -> Path:
    p = workdir / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    cli(["submit", str(p), "--run-dir", str(workdir / name), "--quiet"])
    return workdir / name


def rows_of(run_dir: Path) -> list[dict[str, Any]]:
    journal = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    status = json.loads((run_dir / "status.json").read_text())
    out = []
    for f in (e for e in journal if e["event"] == "fault"):
        # from the injection (ground truth) when chaos injected it, else the supervisor's estimate
        t_fault = f.get("injected_t") or f["t"] - (f["detected_after_s"] or 0.0)
        after = [m for m in metrics if m["t"] and m["t"] > f["t"] and not m["skipped"]]
        step_s = _median_step(metrics)
        out.append({"fault": f["kind"], "step": f["step"], "detect_s": f["detected_after_s"],
                    "detect_steps": round((f["detected_after_s"] or 0.0) / step_s, 1),
                    "recover_s": round(after[0]["t"] - t_fault, 2) if after else None,
                    "recomputed": next((a["lost_steps"] for a in journal if a["event"] == "action"
                                        and a["kind"] == f["kind"] and a["step"] == f["step"]), 0),
                    "goodput": round(status["goodput"], 3), "state": status["state"]})
    return out


def _median_step(metrics: list[dict[str, Any]]) -> float:
    times = sorted(m["step_time"] for m in metrics if m.get("step_time"))
    return times[len(times) // 2] if times else 1.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/local.yaml")
    ap.add_argument("--only", choices=["single", "all"], default=None)
    ap.add_argument("--record", action="store_true", help="write hang detection to benchmarks/measured.json")
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    base["metrics"] = {"enabled": False}
    chaos = base.pop("chaos")
    table: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only != "all":
            for i, fault in enumerate(chaos):
                table += [r | {"run": fault["fault"]} for r in rows_of(run(base | {"chaos": [fault]}, work, f"f{i}"))]
        if args.only != "single":
            table += [r | {"run": "all"} for r in rows_of(run(base | {"chaos": chaos}, work, "all"))]
    hang = [r["detect_s"] for r in table if r["fault"] == "hang" and r["detect_s"] is not None]
    if args.record and hang:
        from benchmarks.measured import record
        record({"ours_hang_detect_s": sorted(hang)[len(hang) // 2]}, f"bench_recovery.py --config {args.config}")
    cols = ["run", "fault", "step", "detect_s", "detect_steps", "recover_s", "recomputed", "goodput", "state"]
    print(" | ".join(cols))
    for r in table:
        print(" | ".join(str(r.get(c)) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
