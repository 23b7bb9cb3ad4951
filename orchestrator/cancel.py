"""``orchestrator cancel RUN_DIR``: stop the ranks of a run's latest attempt, wherever they run.

On Slurm every job the journal names is cancelled if the scheduler still holds it (running, pending or
requeued), and the command returns once squeue and sacct agree they are gone: a cancelled run leaves
no job of its own behind.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator import rundir
from orchestrator.journal import Journal, read_journal
from orchestrator.launcher.base import LaunchSpec
from orchestrator.launcher.registry import make_launcher


def cancel_run(run_dir: Path) -> int:
    cfg = rundir.load(run_dir)
    launches = [r for r in read_journal(run_dir) if r["event"] == "launch"]
    if not launches:
        print(f"{run_dir}: nothing was launched")
        return 0
    last = launches[-1]
    # A supervisor still watching the run reads this when it sees its job CANCELLED: our cancel,
    # not an admin's (resume removes it).
    (run_dir / "CANCEL_REQUESTED").write_text(f"{last.get('job_id') or last['attempt']}\n")
    launcher = make_launcher(cfg, run_dir)
    spec = LaunchSpec(int(last["attempt"]), list(last["nodes"]), cfg.cluster.ranks_per_node, run_dir, "", run_dir)
    stopped = launcher.attach(last, spec)
    if stopped:
        launcher.stop()
    # every job the journal names (the in-allocation path's one job included: its agents dialled the
    # old supervisor and cannot be re-attached); one already stopped above is skipped
    others = launcher.cancel_jobs([str(r["job_id"]) for r in launches if r.get("job_id")])
    with Journal(run_dir) as j:
        if stopped:
            j.append("cancelled", attempt=last["attempt"])
        for job_id in others:
            j.append("leftover_cancelled", job_id=job_id)
    if stopped:
        print(f"{run_dir}: attempt {last['attempt']} stopped")
    else:
        print(f"{run_dir}: attempt {last['attempt']} is not running")
    if others:
        print(f"{run_dir}: also cancelled leftover jobs {', '.join(others)}")
    return 0
