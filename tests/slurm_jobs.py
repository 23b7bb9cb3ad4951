"""``scontrol show job`` as records: what the Slurm tests read to see a job's state and placement. Only
the tests ask the controller this (the launcher reads squeue, sacct and the node history), so the parser
lives with them, on slurm.parsers' record splitting."""

from __future__ import annotations

from dataclasses import dataclass, field

from slurm.parsers import (SlurmParseError, _flags, _int, nodes_of, parse_duration, parse_exit_code,
                           parse_scontrol_record, split_scontrol_records)


@dataclass(frozen=True)
class JobInfo:
    """``scontrol show job``: state, reason and placement of a job the controller still knows."""

    job_id: str
    name: str
    state: str
    reason: str
    nodes: tuple[str, ...]
    excluded_nodes: tuple[str, ...]
    batch_host: str
    exit_code: int
    exit_signal: int
    requeue: bool
    restarts: int
    time_limit_s: int | None
    raw: dict[str, str] = field(repr=False, compare=False)


def _job_info(raw: dict[str, str], record: str) -> JobInfo:
    if "JobId" not in raw:
        raise SlurmParseError(f"not a job record: {record[:80]!r}")
    code, sig = parse_exit_code(raw.get("ExitCode", "0:0"))
    state, _ = _flags(raw.get("JobState", ""))
    return JobInfo(job_id=raw["JobId"], name=raw.get("JobName", ""), state=state,
                   reason=raw.get("Reason", ""), nodes=nodes_of(raw.get("NodeList", "")),
                   excluded_nodes=nodes_of(raw.get("ExcNodeList", "")),
                   batch_host=raw.get("BatchHost", ""), exit_code=code, exit_signal=sig,
                   requeue=raw.get("Requeue") == "1", restarts=_int(raw, "Restarts") or 0,
                   time_limit_s=parse_duration(raw.get("TimeLimit", "UNLIMITED")), raw=raw)


def parse_scontrol_jobs(text: str) -> list[JobInfo]:
    """Every job record in ``scontrol show job [ID]`` output."""
    return [_job_info(parse_scontrol_record(r), r) for r in split_scontrol_records(text)]
