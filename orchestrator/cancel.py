"""``orchestrator cancel RUN_DIR``: stop the ranks of a run's latest attempt, wherever they run."""

from __future__ import annotations

from pathlib import Path

from orchestrator import rundir
from orchestrator.journal import Journal, read_journal
from orchestrator.launcher.base import LaunchSpec


def cancel_run(run_dir: Path) -> int:
    from orchestrator.commands import make_launcher
    cfg = rundir.load(run_dir)
    launches = [r for r in read_journal(run_dir) if r["event"] == "launch"]
    if not launches:
        print(f"{run_dir}: nothing was launched")
        return 0
    last = launches[-1]
    launcher = make_launcher(cfg, run_dir)
    spec = LaunchSpec(int(last["attempt"]), list(last["nodes"]), cfg.cluster.ranks_per_node, run_dir, "", run_dir)
    if launcher.attach(last, spec):
        launcher.stop()
        with Journal(run_dir) as j:
            j.append("cancelled", attempt=last["attempt"])
        print(f"{run_dir}: attempt {last['attempt']} stopped")
    else:
        print(f"{run_dir}: attempt {last['attempt']} is not running")
    return 0
