"""Straggler detection on field-like step times: precision, recall within 20 steps, median delay and
false positives per 100k rank-steps, per scenario (64 ranks x 600 steps per trial, seeded).

    .venv/bin/python -m benchmarks.bench_straggler_field [--trials 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json

from health.detectors.field_noise import SCENARIOS, evaluate
from health.detectors.straggler import StragglerDetector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print("| scenario | recall (≤20 steps) | precision | median delay (steps) | FP / 100k rank-steps |")
    print("|---|---|---|---|---|")
    rows = []
    for sc in SCENARIOS:
        s = evaluate(sc, lambda: StragglerDetector(20, 1.4, 8), trials=args.trials)
        rec = "—" if s.recall is None else f"{s.recall:.3f}"
        delay = "—" if s.median_delay is None else f"{s.median_delay:.0f}"
        print(f"| {sc.name} | {rec} | {s.precision:.3f} | {delay} | {s.fp_per_100k:.2f} |")
        rows.append({"scenario": sc.name, "trials": args.trials, "recall": s.recall, "precision": s.precision,
                     "median_delay_steps": s.median_delay, "fp_per_100k": s.fp_per_100k,
                     "rank_steps": s.rank_steps})
    if args.json:
        with open(args.json, "a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
