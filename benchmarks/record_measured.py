"""Copy checkpoint costs from a ``bench_checkpoint.py --json FILE`` result into benchmarks/measured.json.

    .venv/bin/python -m benchmarks.record_measured --checkpoint-json ck.json

The largest CPU size in the file is taken: its synchronous save, its load, and as the blocking cost the
time the training loop really waits with background staging (until staged), not the call's return.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.measured import record  # noqa: E402


def checkpoint_costs(path: Path) -> dict[str, float]:
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    rows = [r for rec in lines if rec.get("bench") == "checkpoint" for r in rec.get("rows", [])]
    if not rows:
        raise SystemExit(f"{path}: no bench_checkpoint rows")
    big = max(rows, key=lambda r: float(r["size_mb"]))
    return {"sync_save_s": float(big["sync_save_s"]), "load_s": float(big["load_s"]),
            "async_block_s": float(big["bg_staging_until_staged_s"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint-json", type=Path, required=True)
    a = ap.parse_args(argv)
    costs = checkpoint_costs(a.checkpoint_json)
    record(costs, f"bench_checkpoint.py (largest size) via record_measured from {a.checkpoint_json.name}")
    print(costs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
