"""Cluster faults on the real local Slurm cluster, caused the way an admin or a broken machine causes
them: a node set DOWN while its slurmd stays up (and back in service at once), a node drained under a
running job, a slurmd frozen while its ranks keep running (a partitioned node: the fencing case), one
rank killed, a GPU Xid in a rank's stderr, the job cancelled by an admin.

Each test asserts what issue #13 asks of every failure: the run ends COMPLETED (or FAILED with the
reason), ``excluded_nodes`` is exactly the failed node(s), no job of the run is left in the queue, no
checkpoint or step of a fenced epoch was accepted, and every step was applied exactly once. Every test
returns the nodes it touched to service, whatever happens. ORCH_FAULT_TABLE=path appends one line per
handled fault (failure, detected after, action, node, evidence) for the issue note.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm import cmd
from slurm.launcher import ACTIVE_STATES
from tests.conftest import RunResult, run_submit
from tests.test_fencing import applied_once
from tests.test_slurm_backend import launches, slurm_overrides, step_of
from tests.test_slurm_cluster import cluster, wait_for  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

_INSTANCE = os.environ.get("ORCH_SLURM_INSTANCE", "")  # a second local-cluster.sh instance
SLURM_RUN = Path(f"/run/slurm-orch-{_INSTANCE}" if _INSTANCE else "/run/slurm-orch")
FIRED: dict[Path, float] = {}
FAST = {"train": {"steps": 40, "step_sleep_s": 0.05}, "checkpoint": {"every_steps": 5},
        "health": {"startup_timeout_s": 240, "hang_timeout_s": 6.0}}  # 2 shared cores: slow start-up


def scontrol_update(node: str, *settings: str) -> None:
    subprocess.run(["scontrol", "update", f"nodename={node}", *settings], capture_output=True, timeout=30)


def node_usable(node: str) -> bool:
    return any(n.name == node and n.usable and n.state == "idle" for n in cmd.sinfo_nodes(None))


def return_to_service(node: str) -> None:
    """Whatever the test did to ``node``: thaw its slurmd, resume it, wait until it is idle again."""
    pidfile = SLURM_RUN / f"slurmd-{node}.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGCONT)
        except (ProcessLookupError, ValueError):
            pass
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not node_usable(node):
        scontrol_update(node, "state=resume")
        time.sleep(1.0)
    assert node_usable(node), f"{node} did not return to service"


def at_step(run_dir: Path, step: int, action: Callable[[dict[str, Any]], None]) -> threading.Thread:
    """Run ``action(first launch record)`` from a thread once the run has applied ``step`` steps; the
    wall time it acted is kept in ``FIRED`` (for the detection latency in the fault table)."""
    def body() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and step_of(run_dir) < step:
            time.sleep(0.1)
        if step_of(run_dir) >= step:
            FIRED[run_dir] = time.time()
            action(launches(run_dir)[0])
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


@pytest.fixture
def touched() -> Iterator[list[str]]:
    """Nodes a test disturbs; all returned to service afterwards."""
    nodes: list[str] = []
    yield nodes
    for node in nodes:
        return_to_service(node)


def node_of(launch: dict[str, Any], rank: int) -> str:
    return str(launch["rank_map"][str(rank)])


def table(r: RunResult, failure: str) -> None:
    """One line per fault for the issue note (when ORCH_FAULT_TABLE names a file)."""
    path = os.environ.get("ORCH_FAULT_TABLE")
    if not path:
        return
    evidence = {e["kind"]: e.get("evidence", {}) for e in r.events("fault")}
    fired = FIRED.get(r.run_dir)
    with open(path, "a") as f:
        for fault in r.status["faults"]:
            ev = evidence.get(fault["kind"], {})
            short = {k: ev[k] for k in ("evidence_source", "state", "reason", "code", "signal", "classified",
                                        "silent_ranks_by_node", "probe") if k in ev}
            since = round(fault["t"] - fired, 2) if fired else None  # from the moment the test acted
            f.write(json.dumps({"failure": failure, "kind": fault["kind"], "after_s": fault["detected_after_s"],
                                "since_fault_s": since,
                                "action": fault["action"], "node": fault["node"], "evidence": short,
                                "state": r.status["state"], "reason": r.status["reason"]}) + "\n")


def check_run(r: RunResult, excluded: list[str]) -> None:
    """What must hold after every failure."""
    assert r.status["excluded_nodes"] == excluded, (r.status["excluded_nodes"], r.events("node_excluded"))
    for node in r.events("node_excluded"):
        assert node["evidence"], node  # every exclusion says why
    for launch in r.events("launch"):  # no job of the run is left in the queue
        entry = cmd.squeue_job(str(launch["job_id"]))
        assert entry is None or entry.state not in ACTIVE_STATES | {"COMPLETING"}, entry
        rec = cmd.sacct_job(str(launch["job_id"]))
        assert rec is not None and rec.terminal, rec
    fences = {f["epoch"]: f for f in r.events("fence")}
    for loaded in r.events("checkpoint_loaded"):  # only what was committed before its epoch's fence
        if loaded.get("tier", "storage") != "storage":
            continue  # a memory-tier copy: fenced by the epoch and time in its header (trainer.memtier)
        name = f"step_{int(loaded['step']):08d}"
        later = [f for e, f in fences.items() if e > 0]
        assert any(name in f["accepted"] for f in later) or not later, (loaded, later)
    stale = r.events("stale_epoch_rejected")
    assert r.status["stale_epoch_rejected"] >= len(stale)
    assert all(s["epoch"] < s["current"] for s in stale)
    if r.code == 0:
        applied_once(r)


def test_node_down_with_slurmd_alive_blames_that_node(cluster: None, tmp_path: Path,
                                                      touched: list[str]) -> None:
    """scontrol state=down (what an admin or a health check does): the job dies NODE_FAIL, the node is
    back in service before anyone asks (ReturnToService=2), so the blame comes from the event history."""
    run_dir = tmp_path / "run"

    def down(launch: dict[str, Any]) -> None:
        node = node_of(launch, 3)
        touched.append(node)
        scontrol_update(node, "state=down", "reason=orch-test: admin marked it down")
    t = at_step(run_dir, 12, down)
    r = run_submit(tmp_path, slurm_overrides(FAST))
    t.join(timeout=5)
    table(r, "node set DOWN, slurmd alive, back in service")
    assert touched and r.code == 0, r.status.get("reason")
    check_run(r, [touched[0]])
    (ex,) = r.events("node_excluded")
    assert ex["evidence"].get("evidence_source") in ("scontrol", "sacctmgr event"), ex
    assert all(touched[0] not in launch["nodes"] for launch in r.events("launch")[1:])


def test_drained_node_keeps_the_job_and_is_avoided_next(cluster: None, tmp_path: Path,
                                                        touched: list[str]) -> None:
    """A drain lets the running job finish its work; the relaunch after a later crash avoids the node,
    which is not blamed for anything (excluded_nodes stays empty)."""
    run_dir = tmp_path / "run"

    def drain(launch: dict[str, Any]) -> None:
        node = node_of(launch, 3)
        touched.append(node)
        scontrol_update(node, "state=drain", "reason=orch-test: drained by an admin")
    t = at_step(run_dir, 6, drain)
    r = run_submit(tmp_path, slurm_overrides({**FAST, "chaos": [{"fault": "rank_crash", "step": 22, "rank": 0}]}))
    t.join(timeout=5)
    table(r, "node drained while the job runs (+ later rank crash)")
    assert touched and r.code == 0, r.status.get("reason")
    check_run(r, [])
    first, *later = r.events("launch")
    assert touched[0] in first["nodes"] and later and all(touched[0] not in x["nodes"] for x in later)


def test_frozen_slurmd_is_fenced(cluster: None, tmp_path: Path, touched: list[str]) -> None:
    """slurmd SIGSTOPped while its ranks keep running: the controller declares the node dead, the
    supervisor moves on, and nothing the old epoch writes afterwards is accepted."""
    run_dir = tmp_path / "run"

    def freeze(launch: dict[str, Any]) -> None:
        node = node_of(launch, 3)
        touched.append(node)
        os.kill(int((SLURM_RUN / f"slurmd-{node}.pid").read_text().strip()), signal.SIGSTOP)
    t = at_step(run_dir, 12, freeze)
    # the ranks keep training while the controller decides (SlurmdTimeout=10 s, then its ping cycle):
    # the 28 steps left must outlast that on a quiet machine too, or the run simply completes first
    r = run_submit(tmp_path, slurm_overrides({**FAST, "train": {"steps": 40, "step_sleep_s": 1.5}}))
    t.join(timeout=5)
    table(r, "slurmd frozen (SIGSTOP), ranks running")
    assert touched and r.code == 0, r.status.get("reason")
    check_run(r, [touched[0]])
    assert any(f["kind"] == "node_failure" and f["node"] == touched[0] for f in r.status["faults"])


def _rank_pid(run_dir: Path, rank: int) -> int | None:
    """The pid of the training process of ``rank`` of this run (the task's child, ``-m slurm.job``)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"slurm.job" in cmdline and env.get(b"ORCH_RUN_DIR") == str(run_dir).encode() \
                and env.get(b"RANK") == str(rank).encode():
            return int(proc.name)
    return None


def test_killed_rank_is_named_with_its_exit(cluster: None, tmp_path: Path) -> None:
    """SIGKILL one rank: its task reports the exit (signal 9) with the stderr tail; relaunch, no node
    excluded for one crash."""
    run_dir = tmp_path / "run"
    killed: list[int] = []

    def kill(launch: dict[str, Any]) -> None:
        pid = _rank_pid(run_dir, 2)
        if pid is not None:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
    t = at_step(run_dir, 12, kill)
    r = run_submit(tmp_path, slurm_overrides(FAST))
    t.join(timeout=5)
    table(r, "one rank SIGKILLed")
    assert killed and r.code == 0, r.status.get("reason")
    check_run(r, [])
    crash = next(f for f in r.status["faults"] if f["kind"] == "rank_crash")
    assert crash["rank"] == 2 and crash["node"] == node_of(r.events("launch")[0], 2)


def test_gpu_xid_in_stderr_excludes_the_node(cluster: None, tmp_path: Path) -> None:
    """Parity with the local backend: the rank's stderr tail reaches the supervisor, an Xid is a
    gpu_error and its node is excluded."""
    r = run_submit(tmp_path, slurm_overrides({**FAST, "chaos": [{"fault": "gpu_error", "step": 10, "rank": 3}]}))
    table(r, "GPU Xid in a rank's stderr")
    assert r.code == 0, r.status.get("reason")
    bad = node_of(r.events("launch")[0], 3)
    check_run(r, [bad])
    assert any(f["kind"] == "gpu_error" and f["node"] == bad and f["rank"] == 3 for f in r.status["faults"])


def test_admin_cancel_ends_the_run_failed(cluster: None, tmp_path: Path) -> None:
    """An admin's scancel is respected: the run ends FAILED saying so, nothing is relaunched, no node
    is blamed, no job is left; ``resume`` would continue from the last checkpoint."""
    run_dir = tmp_path / "run"
    t = at_step(run_dir, 12, lambda launch: subprocess.run(["scancel", str(launch["job_id"])], timeout=30))
    r = run_submit(tmp_path, slurm_overrides(FAST))
    t.join(timeout=5)
    table(r, "job cancelled by an admin (scancel)")
    assert r.code == 1 and "cancelled outside the orchestrator" in r.status["reason"], r.status["reason"]
    assert len(r.events("launch")) == 1
    check_run(r, [])


def test_hang_is_named_through_slurm_stack_dumps(cluster: None, tmp_path: Path) -> None:
    """A rank stuck outside any collective: the stacks come from ``scancel --signal=USR1`` (the task
    passes it to its rank), never from a signal to a pid another host reported; that rank is named."""
    r = run_submit(tmp_path, slurm_overrides({**FAST, "chaos": [{"fault": "hang", "step": 10, "rank": 2}]}))
    table(r, "one rank hangs (outside a collective)")
    assert r.code == 0, r.status.get("reason")
    check_run(r, [])
    hang = next(f for f in r.status["faults"] if f["kind"] == "hang")
    assert hang["rank"] == 2 and hang["node"] == node_of(r.events("launch")[0], 2), hang
