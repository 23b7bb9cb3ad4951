"""The real local Slurm cluster (slurm/local-cluster.sh): jobs run, sacct reports them, and a killed
slurmd is a real node failure (node DOWN, job NODE_FAIL).

In CI (CI=true) the cluster must already be up: a cluster that is not is a failure, not a skip.
Elsewhere the fixture starts it with the script (root only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from spec.config import RunConfig
from slurm.parsers import (
    SACCT_ARGS, SINFO_ARGS, SacctRecord, job_records, parse_sacct, parse_scontrol_nodes, parse_sinfo_nodes,
)
from tests.slurm_jobs import parse_scontrol_jobs
from slurm.sbatch_options import executor_parameters, render_sbatch_script

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "local-cluster.sh"
NODES = ["node1", "node2", "node3", "node4"]
T = TypeVar("T")


def run(*argv: str, timeout: float = 30) -> str:
    """Run a Slurm command (argv, no shell) and return its stdout; fail loudly with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def cluster_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run([str(SCRIPT), "status"], capture_output=True, timeout=30).returncode == 0


def cluster_settles(timeout_s: float = 180.0) -> bool:
    """Whether every node becomes idle within ``timeout_s``: a node the previous test killed and revived,
    or a job still completing on it, takes a while to return (the module fixture runs again whenever the
    Slurm tests of several files interleave on one xdist worker)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cluster_ready():
            return True
        time.sleep(2.0)
    return False


@pytest.fixture(scope="module")
def cluster() -> None:
    """The cluster is up: required in CI, started on demand elsewhere."""
    if cluster_settles(180.0 if shutil.which("sinfo") else 0.0):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("the local Slurm cluster is not up; run `slurm/local-cluster.sh start` first")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster is not up and starting it needs root")
    proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"local-cluster.sh start failed:\n{proc.stderr[-3000:]}"


def sacct_job(job_id: str) -> SacctRecord | None:
    records = parse_sacct(run("sacct", *SACCT_ARGS, "-j", job_id))
    return job_records(records).get(job_id)


def final_record(job_id: str, timeout: float, num_nodes: int) -> SacctRecord:
    """The job's allocation record once accounting says it ended on all its nodes.

    A job shorter than a second can first show up as a terminal record named "allocation" with
    only the batch host; the full record follows within a second or two.
    """
    def probe() -> SacctRecord | None:
        rec = sacct_job(job_id)
        return rec if rec is not None and rec.terminal and len(rec.nodes) == num_nodes else None
    return wait_for(f"job {job_id} to end in sacct", probe, timeout)


def sbatch(*args: str) -> str:
    return run("sbatch", "--parsable", "--output=/dev/null", *args).strip().split(";")[0]


def test_four_nodes_idle(cluster: None) -> None:
    nodes = {n.name: n for n in parse_sinfo_nodes(run("sinfo", *SINFO_ARGS))}
    assert sorted(nodes) == NODES
    assert all(n.usable for n in nodes.values()), nodes


def test_two_node_job_completes(cluster: None) -> None:
    job = sbatch("--nodes=2", "--ntasks-per-node=2", "--wrap", "srun hostname")
    rec = final_record(job, timeout=60, num_nodes=2)
    assert rec.state == "COMPLETED" and rec.exit_code == 0 and rec.name == "wrap"


def node_state(node: str) -> tuple[str, tuple[str, ...]]:
    (info,) = parse_scontrol_nodes(run("scontrol", "show", "node", node))
    return info.state, info.flags


def test_killed_slurmd_is_a_node_failure(cluster: None) -> None:
    job = sbatch("--no-requeue", "--nodelist=node[3-4]", "--nodes=2", "--ntasks-per-node=2",
                 "--wrap", "srun sleep 300")
    try:
        wait_for("the job to run", lambda: True if parse_scontrol_jobs(
            run("scontrol", "show", "job", job))[0].state == "RUNNING" else None, timeout=60)
        time.sleep(1.0)  # let the step start on both nodes
        killed_at = time.monotonic()
        run(str(SCRIPT), "kill-node", "node4")
        rec = final_record(job, timeout=60, num_nodes=2)
        latency = time.monotonic() - killed_at
        assert rec.state == "NODE_FAIL", rec
        state, flags = node_state("node4")
        assert state == "DOWN" or "NOT_RESPONDING" in flags
        print(f"node failure -> NODE_FAIL in sacct after {latency:.1f}s")
        assert latency < 45
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
        run(str(SCRIPT), "revive-node", "node4", timeout=120)
    assert node_state("node4")[0] == "IDLE"


def test_hostile_values_reach_slurm_literally(cluster: None, tmp_path: Path) -> None:
    """A rendered submitit script, submitted for real: sbatch unquotes, nothing is evaluated."""
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}` | x & 'q' \"d\""
    cfg = RunConfig.model_validate({"name": "lit", "cluster": {"backend": "slurm", "nodes": 1,
                                    "ranks_per_node": 1, "slurm": {
                                        "exclude": ["node4"], "extra_sbatch": [f"--comment={hostile}"]}}})
    script = render_sbatch_script(executor_parameters(cfg, ["node[1-2]"]), tmp_path, "true")
    path = tmp_path / "job.sh"
    path.write_text(script)
    job = run("sbatch", "--parsable", "--hold", str(path)).strip()
    try:
        (info,) = parse_scontrol_jobs(run("scontrol", "show", "job", job))
        assert info.raw["Comment"] == hostile
        assert info.excluded_nodes == ("node1", "node2", "node4")
        assert not marker.exists()
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
