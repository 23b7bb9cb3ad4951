"""Typed views of what Slurm's commands print: sacct, squeue, sinfo, scontrol show node, sacctmgr events.

The Slurm launcher polls these to learn how a job ended (NODE_FAIL vs TIMEOUT vs CANCELLED) and which
nodes are DOWN, so the policy can exclude them. Parsing is pure (text in, dataclasses out) and is tested
against outputs recorded from a real Slurm 22.05 cluster (tests/data/slurm/). The argv constants below
are the only formats these parsers accept; build commands from them, never by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from slurm.hostlist import expand

SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "NodeList", "Start", "End", "Elapsed")
SACCT_ARGS = ["--parsable2", "--noheader", "--duplicates", f"--format={','.join(SACCT_FIELDS)}"]
# Name last: it is the only free-text field, so a '|' in it cannot shift the others.
SQUEUE_FORMAT = "%i|%T|%r|%D|%N|%M|%l|%j"
SQUEUE_ARGS = ["--noheader", f"--format={SQUEUE_FORMAT}"]
SINFO_ARGS = ["--noheader", "--Node", "--format=%N %T %E"]

# Job states after which the job will not run again by itself (REQUEUED and PREEMPTED may; see
# https://slurm.schedmd.com/job_state_codes.html).
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
})
# Ends that say something about the machines rather than the program.
NODE_FAULT_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL"})
_NO_NODES = ("", "(null)", "None assigned", "None")


class SlurmParseError(ValueError):
    """Output that does not have the shape the requested format promises."""


def parse_duration(text: str) -> int | None:
    """Slurm durations to seconds: ``1-02:03:04``, ``02:03:04``, ``03:04``, ``5`` (minutes).

    ``UNLIMITED``/``INFINITE``/``NOT_SET``/``N/A`` give None.
    """
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NOT_SET", "N/A", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or len(parts) > 3 or (days and not days.isdigit()):
        raise SlurmParseError(f"not a Slurm duration: {text!r}")
    nums = [int(p) for p in parts]
    if len(parts) == 1 and not days:  # bare number: minutes
        seconds = nums[0] * 60
    elif len(parts) == 1:  # "1-5": days-hours
        seconds = nums[0] * 3600
    else:
        nums = [0] * (3 - len(nums)) + nums
        seconds = nums[0] * 3600 + nums[1] * 60 + nums[2]
    return seconds + int(days or 0) * 86400


def parse_timestamp(text: str) -> datetime | None:
    """``2026-11-29T07:37:38`` (cluster local time, naive); ``Unknown``/``None`` give None."""
    text = text.strip()
    if text in ("", "Unknown", "None", "N/A", "(null)"):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise SlurmParseError(f"not a Slurm timestamp: {text!r}") from exc


def split_state(text: str) -> tuple[str, str]:
    """``"CANCELLED by 0"`` -> ``("CANCELLED", "by 0")``; ``"NODE_FAIL"`` -> ``("NODE_FAIL", "")``."""
    base, _, detail = text.strip().partition(" ")
    return base.upper(), detail.strip()


def parse_exit_code(text: str) -> tuple[int, int]:
    """sacct/scontrol ``ExitCode=3:0`` -> (exit status 3, signal 0)."""
    code, _, sig = text.strip().partition(":")
    if not code.isdigit() or not (sig or "0").isdigit():
        raise SlurmParseError(f"not an exit code: {text!r}")
    return int(code), int(sig or 0)


def nodes_of(text: str) -> tuple[str, ...]:
    """A node list field, expanded; the placeholders Slurm prints for "no nodes" give ()."""
    return () if text.strip() in _NO_NODES else tuple(expand(text))


@dataclass(frozen=True)
class SacctRecord:
    """One sacct line: a job allocation (``123``) or one of its steps (``123.batch``, ``123.0``)."""

    job_id: str
    step: str | None
    name: str
    state: str
    state_detail: str
    exit_code: int
    exit_signal: int
    nodes: tuple[str, ...]
    start: datetime | None
    end: datetime | None
    elapsed_s: int | None

    @property
    def full_id(self) -> str:
        return self.job_id if self.step is None else f"{self.job_id}.{self.step}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def cancelled_by_uid(self) -> int | None:
        """Who ran scancel: ``CANCELLED by 0`` -> 0 (a person or the supervisor, not a fault)."""
        m = re.fullmatch(r"by (\d+)", self.state_detail)
        return int(m.group(1)) if m else None


def _sacct_record(line: str) -> SacctRecord:
    cols = line.split("|")
    if len(cols) < len(SACCT_FIELDS):
        raise SlurmParseError(f"sacct line has {len(cols)} fields, want {len(SACCT_FIELDS)}: {line!r}")
    tail = cols[-6:]  # State..Elapsed never contain '|'; JobName may
    name = "|".join(cols[1:-6])
    job_id, _, step = cols[0].partition(".")
    state, detail = split_state(tail[0])
    code, sig = parse_exit_code(tail[1])
    return SacctRecord(job_id=job_id, step=step or None, name=name, state=state, state_detail=detail,
                       exit_code=code, exit_signal=sig, nodes=nodes_of(tail[2]),
                       start=parse_timestamp(tail[3]), end=parse_timestamp(tail[4]),
                       elapsed_s=parse_duration(tail[5]))


def parse_sacct(text: str) -> list[SacctRecord]:
    """All records of ``sacct`` run with :data:`SACCT_ARGS`, in output order."""
    return [_sacct_record(line) for line in text.splitlines() if line.strip()]


def job_records(records: list[SacctRecord]) -> dict[str, SacctRecord]:
    """The allocation record of each job; with ``--duplicates`` the last (newest) attempt wins.

    Caveat seen on 22.05: a job that ends within a second of starting can briefly be reported as a
    terminal record named ``allocation`` listing only its batch host; the full record replaces it a
    second or two later. Callers that need the node list should re-poll until it is complete.
    """
    return {r.job_id: r for r in records if r.step is None}


@dataclass(frozen=True)
class QueueEntry:
    """One job as squeue sees it (pending, running, or just ended)."""

    job_id: str
    state: str
    reason: str
    num_nodes: int
    nodes: tuple[str, ...]
    elapsed_s: int | None
    time_limit_s: int | None
    name: str


def parse_squeue(text: str) -> list[QueueEntry]:
    """Output of ``squeue`` run with :data:`SQUEUE_ARGS`."""
    out: list[QueueEntry] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = line.split("|", 7)
        if len(cols) != 8 or not cols[3].isdigit():
            raise SlurmParseError(f"not a squeue {SQUEUE_FORMAT!r} line: {line!r}")
        out.append(QueueEntry(job_id=cols[0], state=cols[1].upper(), reason=cols[2],
                              num_nodes=int(cols[3]), nodes=nodes_of(cols[4]),
                              elapsed_s=parse_duration(cols[5]), time_limit_s=parse_duration(cols[6]),
                              name=cols[7]))
    return out


# sinfo appends one of these to a state: '*' not responding, '~' powered off, '#' powering up, ...
_STATE_SUFFIXES = "*~#!%$@^-"


@dataclass(frozen=True)
class NodeStatus:
    """One node from ``sinfo -N``: ``node4 down* Not responding``."""

    name: str
    state: str
    responding: bool
    reason: str

    @property
    def usable(self) -> bool:
        """Can take (or is running) work: idle/mixed/allocated and answering."""
        return self.responding and self.state in ("idle", "mixed", "allocated", "completing")


def parse_sinfo_nodes(text: str) -> list[NodeStatus]:
    """Output of ``sinfo`` run with :data:`SINFO_ARGS`; a node in several partitions comes once."""
    seen: dict[str, NodeStatus] = {}
    for line in text.splitlines():
        cols = line.split(None, 2)
        if not cols:
            continue
        if len(cols) < 2:
            raise SlurmParseError(f"not a sinfo '%N %T %E' line: {line!r}")
        raw_state = cols[1]
        state = raw_state.rstrip(_STATE_SUFFIXES).lower()
        reason = cols[2].strip() if len(cols) > 2 else ""
        seen.setdefault(cols[0], NodeStatus(name=cols[0], state=state, responding="*" not in raw_state,
                                            reason="" if reason == "none" else reason))
    return list(seen.values())


# A key starts a token, begins with a letter and may hold '/', ':' or '.' (``CPUs/Task``,
# ``NtasksPerN:B:S:C``). Anything else up to the next key is the value, spaces included
# (``OS=Linux 6.1 #1 SMP``, ``Reason=Not responding [root@...]``).
_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_/:.]*)=")


def parse_scontrol_record(text: str) -> dict[str, str]:
    """One ``scontrol show`` record (multi-line or ``-o`` one-liner) as key -> raw value.

    Limitation: a value that itself contains `` Word=`` (possible only in free text such as a
    Reason or Comment) is split there, as scontrol's own format is ambiguous.
    """
    flat = " ".join(text.split("\n"))
    keys = list(_KEY.finditer(flat))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(flat)
        out[m.group(1)] = flat[m.end():end].strip()
    return out


def split_scontrol_records(text: str) -> list[str]:
    """Records of ``scontrol show node|job`` (blank-line separated) or ``scontrol -o`` (a line each)."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace() or not records:
            records.append([])
        records[-1].append(line)
    return ["\n".join(r) for r in records]


def _flags(state: str) -> tuple[str, tuple[str, ...]]:
    """``DOWN+NOT_RESPONDING`` -> ("DOWN", ("NOT_RESPONDING",)); sinfo suffixes are stripped too."""
    base, *flags = state.strip().rstrip(_STATE_SUFFIXES).upper().split("+")
    return base, tuple(flags)


def _int(raw: dict[str, str], key: str) -> int | None:
    value = raw.get(key, "")
    return int(value) if value.isdigit() else None


@dataclass(frozen=True)
class NodeInfo:
    """``scontrol show node``: the controller's full view of one node."""

    name: str
    state: str
    flags: tuple[str, ...]
    reason: str
    cpus_total: int | None
    cpus_alloc: int | None
    addr: str
    port: int | None
    raw: dict[str, str] = field(repr=False, compare=False)

    @property
    def down(self) -> bool:
        """DOWN, or not answering the controller (it goes DOWN after SlurmdTimeout)."""
        return self.state in ("DOWN", "FAIL") or "NOT_RESPONDING" in self.flags

    @property
    def drained(self) -> bool:
        return self.state in ("DRAIN", "DRAINED", "DRAINING") or "DRAIN" in self.flags


def parse_scontrol_nodes(text: str) -> list[NodeInfo]:
    """Every node record in ``scontrol show node [NAME]`` output."""
    nodes: list[NodeInfo] = []
    for record in split_scontrol_records(text):
        raw = parse_scontrol_record(record)
        if "NodeName" not in raw:
            raise SlurmParseError(f"not a node record: {record[:80]!r}")
        state, flags = _flags(raw.get("State", ""))
        nodes.append(NodeInfo(name=raw["NodeName"], state=state, flags=flags,
                              reason=raw.get("Reason", ""), cpus_total=_int(raw, "CPUTot"),
                              cpus_alloc=_int(raw, "CPUAlloc"), addr=raw.get("NodeAddr", ""),
                              port=_int(raw, "Port"), raw=raw))
    return nodes


# ``sacctmgr show event``: the controller's node history, kept after a node has returned to service.
EVENT_FIELDS = ("NodeName", "Start", "End", "State", "Reason", "User")
SACCTMGR_EVENT_ARGS = ["--noheader", "--parsable2", "show", "event",
                       f"format={','.join(EVENT_FIELDS)}"]
# Node states after which the node's jobs were killed (a DRAIN lets them run to their end).
NODE_DEAD_STATES = frozenset({"DOWN", "FAIL", "FAILING", "NOT_RESPONDING"})


@dataclass(frozen=True)
class NodeEvent:
    """One node event: ``node4|2026-11-30T06:45:00|2026-11-30T06:45:00|DOWN|Not responding|root(0)``.

    ``end`` is None while the node is still in that state (sacctmgr prints ``Unknown``).
    """

    node: str
    start: datetime | None
    end: datetime | None
    state: str
    reason: str
    user: str

    @property
    def dead(self) -> bool:
        """The node was DOWN/FAIL (its jobs were killed), not merely drained."""
        return any(part in NODE_DEAD_STATES for part in self.state.rstrip(_STATE_SUFFIXES).upper().split("+"))

    def overlaps(self, since: datetime, until: datetime | None) -> bool:
        """The event was open at some moment of [since, until] (until None: up to now)."""
        if self.start is not None and until is not None and self.start > until:
            return False
        return self.end is None or self.end >= since


def parse_sacctmgr_events(text: str) -> list[NodeEvent]:
    """Output of ``sacctmgr`` run with :data:`SACCTMGR_EVENT_ARGS`; cluster events (no node) are skipped.

    The reason is free text and may contain '|': the fields after it (User) are taken from the right.
    """
    out: list[NodeEvent] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = line.split("|")
        if len(cols) < len(EVENT_FIELDS):
            raise SlurmParseError(f"sacctmgr event line has {len(cols)} fields, want {len(EVENT_FIELDS)}: {line!r}")
        if not cols[0].strip():
            continue  # a cluster event (TRES registered), not a node's
        out.append(NodeEvent(node=cols[0].strip(), start=parse_timestamp(cols[1]), end=parse_timestamp(cols[2]),
                             state=cols[3].strip().upper(), reason="|".join(cols[4:-1]).strip(),
                             user=cols[-1].strip()))
    return out
