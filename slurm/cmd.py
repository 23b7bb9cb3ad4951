"""Thin, typed wrappers over the Slurm commands the launcher needs (argv only, never a shell).

Each returns parsed records from :mod:`slurm.parsers`; a command that fails or times out raises
:class:`SlurmCommandError` so callers decide whether a transient controller hiccup matters.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import datetime

from slurm.parsers import (
    SACCT_ARGS, SACCTMGR_EVENT_ARGS, SINFO_ARGS, SQUEUE_ARGS, NodeEvent, NodeInfo, NodeStatus, QueueEntry,
    SacctRecord, job_records, parse_sacct, parse_sacctmgr_events, parse_scontrol_nodes,
    parse_scontrol_record, parse_sinfo_nodes, parse_squeue, split_scontrol_records,
)


class SlurmCommandError(RuntimeError):
    """A Slurm command exited non-zero or did not answer in time."""


def run(argv: Sequence[str], timeout: float = 20.0) -> str:
    """stdout of ``argv``; the controller being slow or down becomes one exception type."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise SlurmCommandError(f"{argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise SlurmCommandError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return proc.stdout


def sinfo_nodes(partition: str | None) -> list[NodeStatus]:
    """Every node of the partition (or of the cluster) with its state and responsiveness."""
    argv = ["sinfo", *SINFO_ARGS]
    if partition:
        argv.append(f"--partition={partition}")
    return parse_sinfo_nodes(run(argv))


def scontrol_nodes(names: Sequence[str]) -> list[NodeInfo]:
    """The controller's view of the named nodes (address, DOWN/NOT_RESPONDING flags)."""
    if not names:
        return []
    return parse_scontrol_nodes(run(["scontrol", "show", "node", ",".join(names)]))


def squeue_job(job_id: str) -> QueueEntry | None:
    """The job while the controller still lists it; None once it has left the queue."""
    try:
        out = run(["squeue", *SQUEUE_ARGS, f"--jobs={job_id}"])
    except SlurmCommandError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    return next((e for e in parse_squeue(out) if e.job_id == job_id), None)


def sacct_job(job_id: str) -> SacctRecord | None:
    """The job's allocation record in accounting (the newest, with ``--duplicates``)."""
    return job_records(parse_sacct(run(["sacct", *SACCT_ARGS, f"--jobs={job_id}"]))).get(job_id)


def scancel(job_id: str, signal: str | None = None) -> None:
    argv = ["scancel"] + ([f"--signal={signal}"] if signal else []) + [job_id]
    run(argv)


def drain(node: str, reason: str) -> None:
    """Take a node out of scheduling until an admin resumes it; the reason is one argv item."""
    run(["scontrol", "update", f"nodename={node}", "state=drain", f"reason={reason}"])


def node_events(nodes: Sequence[str], since: datetime) -> list[NodeEvent]:
    """The controller's event history of ``nodes`` from ``since`` (cluster local time): how a node that
    is back in service now was DOWN while our job ran."""
    if not nodes:
        return []
    argv = ["sacctmgr", *SACCTMGR_EVENT_ARGS, f"nodes={','.join(nodes)}",
            f"start={since.strftime('%Y-%m-%dT%H:%M:%S')}"]
    return parse_sacctmgr_events(run(argv))


def signal_steps(job_id: str, signal: str) -> None:
    """Send ``signal`` to every task of the job's steps, wherever they run (not the batch shell)."""
    run(["scancel", f"--signal={signal}", job_id])


def scontrol_job(job_id: str) -> dict[str, str] | None:
    """The controller's record of the job, key -> raw value (None once it has forgotten it)."""
    try:
        out = run(["scontrol", "show", "job", job_id])
    except SlurmCommandError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    records = [parse_scontrol_record(r) for r in split_scontrol_records(out)]
    return next((r for r in records if r.get("JobId") == job_id), None)


def preempted_at(job_id: str) -> str | None:
    """When the controller selected the job for preemption (``PreemptTime``), or None: the evidence
    that a SIGTERM and exit 75 were a preemption, not a time limit."""
    job = scontrol_job(job_id)
    t = job.get("PreemptTime", "None") if job is not None else "None"
    return None if t in ("", "None", "Unknown") else t


def requeue(job_id: str) -> None:
    """Put a (requeueable) batch job back in the queue under the same id, now: a preempted job whose
    ranks already checkpointed would otherwise end COMPLETED, or hold its nodes until GraceTime ends."""
    run(["scontrol", "requeue", job_id])
