"""Parsers of Slurm command output (slurm.parsers), against outputs recorded from a real
Slurm 22.05 cluster (slurm/local-cluster.sh) in tests/data/slurm/."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from slurm.parsers import (
    SlurmParseError, job_records, parse_duration, parse_exit_code, parse_sacct, parse_scontrol_nodes,
    parse_scontrol_record, parse_sinfo_nodes, parse_squeue, parse_timestamp, split_state,
)
from tests.slurm_jobs import parse_scontrol_jobs

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize("text, seconds", [
    ("00:00:17", 17), ("00:01:27", 87), ("01:13", 73), ("1-02:03:04", 93784), ("365-00:00:00", 31536000),
    ("5", 300), ("2-5", 2 * 86400 + 5 * 3600), ("UNLIMITED", None), ("INFINITE", None), ("N/A", None),
])
def test_parse_duration(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["1:2:3:4", "ab:cd", "x-01:00"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(SlurmParseError):
        parse_duration(bad)


def test_small_fields() -> None:
    assert split_state("CANCELLED by 0") == ("CANCELLED", "by 0")
    assert split_state("NODE_FAIL") == ("NODE_FAIL", "")
    assert parse_exit_code("3:0") == (3, 0) and parse_exit_code("0:15") == (0, 15)
    assert parse_timestamp("Unknown") is None and parse_timestamp("None") is None
    assert parse_timestamp("2026-11-29T07:39:05") == datetime(2026, 11, 29, 7, 39, 5)


def test_sacct_recorded() -> None:
    records = parse_sacct(read("sacct.txt"))
    jobs = job_records(records)
    assert {j: r.state for j, r in jobs.items()} == {
        "1": "COMPLETED", "2": "NODE_FAIL", "3": "NODE_FAIL", "4": "TIMEOUT", "5": "CANCELLED",
        "6": "FAILED", "7": "REQUEUED", "8": "CANCELLED", "9": "CANCELLED", "10": "NODE_FAIL",
        "11": "CANCELLED"}
    assert jobs["10"].nodes == ("node3", "node4") and jobs["10"].elapsed_s == 17
    assert jobs["5"].cancelled_by_uid == 0 and jobs["4"].cancelled_by_uid is None
    assert jobs["6"].exit_code == 3 and jobs["6"].terminal
    assert not jobs["7"].terminal  # requeued: it will run again
    assert jobs["8"].nodes == () and jobs["8"].start is None  # cancelled while pending
    assert jobs["11"].name == "big|pending job"  # a '|' in the name does not shift the fields


def test_sacct_steps() -> None:
    steps = {r.full_id: r for r in parse_sacct(read("sacct.txt")) if r.step is not None}
    assert steps["1.0"].name == "hostname" and steps["1.0"].nodes == ("node1", "node2")
    assert steps["10.batch"].state == "CANCELLED" and steps["10.batch"].exit_signal == 15
    assert steps["10.batch"].job_id == "10" and steps["10.batch"].step == "batch"


def test_sacct_states_not_recorded_here() -> None:
    """PREEMPTED needs a preemption policy the local cluster does not configure: hand-written line."""
    line = "42|train|PREEMPTED|0:15|node[2-3]|2026-11-29T08:00:00|2026-11-29T08:10:00|00:10:00"
    (rec,) = parse_sacct(line + "\n\n")
    assert rec.state == "PREEMPTED" and rec.terminal and rec.nodes == ("node2", "node3")
    assert rec.elapsed_s == 600


def test_sacct_rejects_wrong_format() -> None:
    with pytest.raises(SlurmParseError):
        parse_sacct("1|wrap|COMPLETED")


def test_squeue_format_recorded() -> None:
    pending, running = parse_squeue(read("squeue_fmt.txt"))
    assert (pending.job_id, pending.state, pending.reason, pending.nodes) == ("7", "PENDING", "BeginTime", ())
    assert pending.time_limit_s is None
    assert running.nodes == ("node1", "node2", "node3", "node4") and running.num_nodes == 4
    assert running.name == "big|pending job"


def test_sinfo_recorded() -> None:
    nodes = {n.name: n for n in parse_sinfo_nodes(read("sinfo_nodes_down.txt"))}
    assert nodes["node4"].state == "down" and not nodes["node4"].responding
    assert nodes["node4"].reason == "Not responding" and not nodes["node4"].usable
    assert nodes["node1"].state == "mixed" and nodes["node1"].usable and nodes["node1"].reason == ""
    assert all(n.usable for n in parse_sinfo_nodes(read("sinfo_nodes.txt")))


def test_scontrol_node_down_recorded() -> None:
    (node,) = parse_scontrol_nodes(read("scontrol_show_node_down.txt"))
    assert (node.name, node.state, node.flags) == ("node4", "DOWN", ("NOT_RESPONDING",))
    assert node.down and not node.drained and node.port == 17004 and node.cpus_total == 4
    assert node.reason.startswith("Not responding [root@")


def test_scontrol_node_values_with_spaces() -> None:
    (node,) = parse_scontrol_nodes(read("scontrol_show_node1.txt"))
    assert node.raw["OS"].startswith("Linux ") and "#1 SMP" in node.raw["OS"]
    assert node.raw["CfgTRES"] == "cpu=4,mem=4000M,billing=4"


def test_scontrol_oneliner_recorded() -> None:
    nodes = parse_scontrol_nodes(read("scontrol_show_node_oneliner.txt"))
    assert [n.name for n in nodes] == ["node1", "node2", "node3", "node4"]
    assert [n.state for n in nodes] == ["MIXED", "IDLE", "IDLE", "IDLE"]


def test_scontrol_job_node_fail_recorded() -> None:
    (job,) = parse_scontrol_jobs(read("scontrol_show_job_node_fail.txt"))
    assert (job.job_id, job.state, job.reason) == ("10", "NODE_FAIL", "NodeDown")
    assert job.nodes == ("node3", "node4") and job.batch_host == "node3"
    assert (job.exit_code, job.exit_signal, job.requeue) == (0, 15, False)
    assert job.raw["NtasksPerN:B:S:C"] == "2:0:*:*" and job.raw["CPUs/Task"] == "1"


def test_scontrol_job_pending_and_running_recorded() -> None:
    (pending,) = parse_scontrol_jobs(read("scontrol_show_job_pending.txt"))
    (running,) = parse_scontrol_jobs(read("scontrol_show_job_running.txt"))
    assert pending.state == "PENDING" and pending.nodes == () and pending.reason == "Resources"
    assert running.state == "RUNNING" and running.nodes == ("node1",) and running.requeue


def test_scontrol_record_drain_flags() -> None:
    raw = parse_scontrol_record("NodeName=n1 State=IDLE+DRAIN Reason=bad gpu [root@2026-01-01T00:00:00]")
    assert raw["Reason"] == "bad gpu [root@2026-01-01T00:00:00]"
    (node,) = parse_scontrol_nodes("NodeName=n1 State=IDLE+DRAIN Reason=bad gpu")
    assert node.drained and not node.down


def test_scontrol_rejects_other_records() -> None:
    with pytest.raises(SlurmParseError):
        parse_scontrol_nodes(read("scontrol_show_job_running.txt"))


def test_sacctmgr_events_recorded() -> None:
    """Node event history recorded on the local cluster (22.05): a node set DOWN by an admin while its
    slurmd stayed up, back in service within the second (ReturnToService=2); the cluster's own event
    (no node name) is skipped."""
    from slurm.parsers import parse_sacctmgr_events
    (ev,) = parse_sacctmgr_events(read("sacctmgr_events.txt"))
    assert ev.node == "node4" and ev.state == "DOWN" and ev.reason == "test-down probe"
    assert ev.start == ev.end == datetime(2026, 11, 30, 6, 45, 0) and ev.user == "root(0)"
    assert ev.dead and ev.overlaps(datetime(2026, 11, 30, 6, 44, 59), None)
    assert not ev.overlaps(datetime(2026, 11, 30, 6, 45, 1), None)
    assert not ev.overlaps(datetime(2026, 11, 30, 6, 40), datetime(2026, 11, 30, 6, 44))


def test_sacctmgr_events_open_drain_and_pipes() -> None:
    from slurm.parsers import SlurmParseError, parse_sacctmgr_events
    text = ("node2|2026-11-30T07:00:00|Unknown|DOWN*|Not responding|slurm(64030)\n"
            "node3|2026-11-30T07:01:00|Unknown|DRAIN|disk|check|root(0)\n")
    down, drain = parse_sacctmgr_events(text)
    assert down.end is None and down.dead and down.overlaps(datetime(2026, 11, 30, 8), None)
    assert drain.reason == "disk|check" and not drain.dead
    with pytest.raises(SlurmParseError):
        parse_sacctmgr_events("node1|2026-11-30T07:00:00\n")
