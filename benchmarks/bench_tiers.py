"""Recovery cost per tier, median and spread over repeats: in-step replay (a one-off NaN replayed clean:
transient, applied), in-step skip (a NaN, replay off), in-process rollback
(three bad steps in a row), relaunch (a rank crash) on the local cluster. Detection latency and time from
the fault to the first good step after it. (Slurm resubmission: benchmarks/bench_slurm_recovery.py.)

Usage: .venv/bin/python benchmarks/bench_tiers.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_recovery import rows_of, run  # noqa: E402
from tests.conftest import BASE, deep_merge  # noqa: E402

REPLAY_OFF = {"policy": {"replay": {"enabled": False}}}  # the skip/rollback tiers as such (no replay first)
TIERS: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "in-step replay (transient)": ("transient_fault", [{"fault": "nan", "step": 30, "rank": 1}], {}),
    "in-step skip": ("nan", [{"fault": "nan", "step": 30, "rank": 1}], REPLAY_OFF),
    "in-process rollback": ("divergence", [{"fault": "nan", "step": 35, "rank": 1}] * 3, REPLAY_OFF),  # 3 bad in a row
    "relaunch (local)": ("rank_crash", [{"fault": "rank_crash", "step": 35, "rank": 3}], {}),
}


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}–{max(xs):.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true",
                    help="write the relaunch's medians to benchmarks/measured.json (the at-scale simulation reads it)")
    args = ap.parse_args()
    medians: dict[str, dict[str, float]] = {}
    print("| tier | fault | repeats | detection s, median [min–max] | fault → first good step s | steps recomputed |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for tier, (kind, chaos, extra) in TIERS.items():
            det, rec, lost = [], [], []
            for i in range(args.repeats):
                cfg = deep_merge(BASE, {"chaos": chaos, "metrics": {"enabled": False}, **extra})
                rows = [r for r in rows_of(run(cfg, Path(tmp), f"{kind}-{i}")) if r["fault"] == kind]
                if rows:
                    det.append(rows[0]["detect_s"] or 0.0)
                    rec.append(rows[0]["recover_s"] or 0.0)
                    lost.append(float(rows[0]["recomputed"]))
            if det:
                medians[kind] = {"detect": statistics.median(det), "recover": statistics.median(rec)}
                print(f"| {tier} | {kind} | {len(det)} | {spread(det)} | {spread(rec)} | {spread(lost)} |", flush=True)
    crash = medians.get("rank_crash")
    if args.record and crash:
        from benchmarks.measured import record
        record({"ours_detect_s": crash["detect"], "ours_relaunch_s": crash["recover"] - crash["detect"]},
               f"bench_tiers.py --repeats {args.repeats}: rank crash, median detection and fault -> first good step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
