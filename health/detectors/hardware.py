"""Classify why a rank exited, from its exit code, signal and the tail of its stderr.

The classification drives the recovery tier: a bad GPU or a broken local disk follows the *node*
(exclude it, or the relaunch lands on it again), a collective timeout or an ordinary crash usually does
not (relaunch), and an out-of-memory or a full shared file system fails identically on every node
(abort and tell the user what to change, rather than burn the restart budget).

Rules are a table checked in order; the first match wins, so the more specific, hardware-level
evidence (Xid, ECC) outranks the generic text it often comes with ("CUDA error", "NCCL error").
The classifier only finds evidence and names the kind; what each kind calls for (its action and
advice) comes from the one fault vocabulary, :mod:`spec.faults`.
"""

from __future__ import annotations

import re
import signal as _signal
from dataclasses import dataclass
from typing import Literal

from spec.faults import spec

Action = Literal["exclude_node", "relaunch", "abort"]


@dataclass(frozen=True)
class FaultClass:
    kind: str
    action: Action
    evidence: str
    advice: str


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    advice: str | None = None  # more specific than the kind's own advice, when the evidence says more


def _class(kind: str, evidence: str, advice: str | None = None) -> FaultClass:
    """A finding with the action and advice the fault vocabulary gives its kind."""
    fs = spec(kind)
    return FaultClass(kind, fs.action.value, evidence, advice or fs.advice)  # type: ignore[arg-type]


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)


# Node-local paths: a full disk there is this node's problem, not the run's.
_LOCAL_PATH = _rx(r"(?<![\w/])/(?:tmp|dev/shm|var/tmp|local|scratch/local|localscratch|raid/local)\b")

_RULES: tuple[_Rule, ...] = (
    _Rule("config_error", _rx(r"cluster\.device is cuda but"),
          "the run asked for GPUs this node cannot give (trainer.device names what is missing); fix the "
          "node or the config (cluster.device: auto or cpu, fewer ranks_per_node), then resubmit"),
    _Rule("rank_crash", _rx(r"device-side assert"),
          "a device-side assert is a bug in the model or data (e.g. an index out of range), not the "
          "hardware; rerun with CUDA_LAUNCH_BLOCKING=1 to find the kernel"),
    _Rule("gpu_error",
          _rx(r"\bXid\b", r"fallen off the bus", r"uncorrectable ECC", r"ECC error",
              r"CUDA error: (?:unspecified launch failure|an illegal instruction|uncorrectable)",
              r"cudaErrorECCUncorrectable", r"GPU is lost", r"NVML_ERROR_GPU_IS_LOST",
              r"row remapping failure")),
    _Rule("oom",
          _rx(r"CUDA out of memory", r"OutOfMemoryError", r"CUDA error: out of memory",
              r"oom-kill", r"Out of memory: Kill(?:ed)? process", r"MemoryError")),
    _Rule("lustre_error", _rx(r"LustreError", r"\blustre\b.*(?:error|evict)")),
    _Rule("io_error",
          _rx(r"Input/output error", r"\bEIO\b", r"\[Errno 5\]", r"Stale file handle", r"ESTALE")),
    _Rule("disk_full",
          _rx(r"No space left on device", r"\bENOSPC\b", r"\[Errno 28\]", r"Disk quota exceeded",
              r"\bEDQUOT\b")),
    _Rule("collective_timeout",
          _rx(r"Watchdog caught collective operation timeout", r"collective operation timeout",
              r"Timed out waiting .* for (?:send|recv)", r"gloo.*timed? ?out", r"NCCL.*timed? ?out",
              r"monitoredBarrier", r"DistStoreError.*[Tt]imeout", r"Socket Timeout")),
    _Rule("nccl_error",
          _rx(r"NCCL error", r"ncclSystemError", r"ncclInternalError", r"ncclRemoteError",
              r"ncclUnhandledCudaError", r"ncclInvalidUsage", r"Connection closed by peer",
              r"Connection reset by peer")),
    _Rule("gpu_error", _rx(r"CUDA error", r"cudaError\w*", r"CUBLAS_STATUS_EXECUTION_FAILED"),
          "a CUDA runtime error; if it repeats on the same node, that GPU is bad"),
)


def _evidence_line(text: str, m: re.Match[str]) -> str:
    """The full stderr line that matched, so the journal shows context, not just the keyword."""
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    return text[start:end if end >= 0 else len(text)].strip()[:500]


def _signal_name(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _normalise(code: int | None, sig: int | None) -> tuple[int | None, int | None]:
    """Shells report death by signal N as 128+N, subprocess as -N; fold both into ``sig``."""
    if sig is None and code is not None:
        if code < 0:
            return None, -code
        if 128 < code < 160:
            return code, code - 128
    return code, sig


def classify_exit(code: int | None, signal: int | None, stderr_tail: str) -> FaultClass:
    """Map one rank exit to a fault kind and the recovery action it calls for."""
    code, sig = _normalise(code, signal)
    text = stderr_tail or ""
    for rule in _RULES:
        m = rule.pattern.search(text)
        if m is None:
            continue
        line = _evidence_line(text, m)
        if rule.kind == "disk_full" and _LOCAL_PATH.search(line):
            # a full node-local disk is the node's problem (exclude it); a full shared checkpoint file
            # system is everybody's (abort: every relaunch would hit it again)
            return _class("local_disk_full", line)
        return _class(rule.kind, line, rule.advice)
    how = f"killed by {_signal_name(sig)}" if sig is not None else f"exit code {code}"
    if sig == _signal.SIGKILL:
        return _class("rank_crash", f"{how}, no error text",
                      "SIGKILL with no message is often the kernel OOM killer or the scheduler; "
                      "check dmesg and the job's memory limit")
    return _class("rank_crash", how)
