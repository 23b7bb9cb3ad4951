"""Per-node entry point for probing a whole allocation: ``srun --ntasks-per-node=1 python -m
health.probe_entry --json`` prints one JSON list per node; the caller concatenates them.

Kept separate from the orchestrator CLI so that it imports nothing heavy (no torch unless the
collective probe is asked for) and starts fast on every node.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from health.probe_cli import KNOWN_PROBES, main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m health.probe_entry", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--config", default=None, help="run.yaml, for thresholds and the checkpoint dir")
    ap.add_argument("--probes", default=None,
                    help=f"comma-separated subset of {','.join(KNOWN_PROBES)} (default: from config)")
    ap.add_argument("--checkpoint-dir", default=None, help="directory to test for space and writes")
    return ap.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    probes = [p.strip() for p in a.probes.split(",") if p.strip()] if a.probes else None
    cfg = None
    if a.config is not None:  # the schema only: the orchestrator checked the run's config before the probe
        import yaml

        from spec.config import RunConfig
        cfg = RunConfig.model_validate(yaml.safe_load(Path(a.config).read_text()) or {})
    return main(cfg, a.json, probes=probes, checkpoint_dir=a.checkpoint_dir)


if __name__ == "__main__":
    sys.exit(run())
