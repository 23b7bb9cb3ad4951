"""Kernel-log evidence of hardware trouble: GPU Xids, block-device I/O errors, Lustre client errors.

Read from whichever source this node lets us read (``dmesg`` needs privileges on many distributions,
``/dev/kmsg`` needs root, ``/var/log/kern.log`` needs the adm group), so each source is tried in turn
and the first that yields lines wins. Only lines newer than ``max_age_s`` count: a Xid from last month
says nothing about today's GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

PATTERNS: dict[str, re.Pattern[str]] = {
    "xid": re.compile(r"NVRM: Xid|\bXid \(PCI:", re.IGNORECASE),
    "gpu_off_bus": re.compile(r"fallen off the bus", re.IGNORECASE),
    "io_error": re.compile(r"I/O error|blk_update_request|Buffer I/O error|EXT4-fs error|XFS .*error",
                           re.IGNORECASE),
    "lustre": re.compile(r"LustreError|Lustre: .*(?:evict|lost connection)", re.IGNORECASE),
    "oom_kill": re.compile(r"Out of memory: Kill|oom-kill", re.IGNORECASE),
}
_DMESG_TS = re.compile(r"^\[\s*(\d+\.\d+)\]")  # seconds since boot
_KMSG_TS = re.compile(r"^\d+,\d+,(\d+),")  # microseconds since boot


@dataclass(frozen=True)
class KernelLogScan:
    source: str | None  # where the lines came from; None when nothing was readable
    counts: dict[str, int]
    samples: dict[str, list[str]]  # up to 3 recent lines per pattern


def _dmesg() -> list[str]:
    out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, check=True)
    return out.stdout.splitlines()


def _kmsg(max_lines: int = 20_000) -> list[str]:
    """/dev/kmsg blocks at its end unless opened non-blocking; EAGAIN means 'no more records'."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    lines = []
    try:
        while len(lines) < max_lines:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            if not rec:
                break
            lines.append(rec.decode(errors="replace").rstrip("\n"))
    finally:
        os.close(fd)
    return lines


def _kern_log(path: str = "/var/log/kern.log", max_bytes: int = 4 << 20) -> list[str]:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - max_bytes))
        return f.read().decode(errors="replace").splitlines()


DEFAULT_SOURCES: tuple[tuple[str, Callable[[], list[str]]], ...] = (
    ("dmesg", _dmesg), ("/dev/kmsg", _kmsg), ("/var/log/kern.log", _kern_log))


def read_kernel_log(sources: Iterable[tuple[str, Callable[[], list[str]]]] = DEFAULT_SOURCES
                    ) -> tuple[str | None, list[str]]:
    """The first readable source and its lines; (None, []) when none is readable here."""
    for name, read in sources:
        try:
            lines = read()
        except (OSError, subprocess.SubprocessError):
            continue
        if lines:
            return name, lines
    return None, []


def _uptime_s(line: str) -> float | None:
    m = _DMESG_TS.match(line)
    if m:
        return float(m.group(1))
    m = _KMSG_TS.match(line)
    return int(m.group(1)) / 1e6 if m else None


def scan_kernel_log(source: str | None, lines: list[str], max_age_s: float | None = 86_400.0,
                    uptime_s: float | None = None) -> KernelLogScan:
    """Count pattern hits among recent lines. Lines without a boot-relative timestamp (kern.log's
    wall-clock format) are all counted: kern.log is rotated, so its tail is recent anyway."""
    if uptime_s is None:
        uptime_s = time.time() - psutil.boot_time()
    counts = {k: 0 for k in PATTERNS}
    samples: dict[str, list[str]] = {k: [] for k in PATTERNS}
    for line in lines:
        ts = _uptime_s(line)
        if max_age_s is not None and ts is not None and uptime_s - ts > max_age_s:
            continue
        for kind, rx in PATTERNS.items():
            if rx.search(line):
                counts[kind] += 1
                samples[kind] = (samples[kind] + [line[:300]])[-3:]
    return KernelLogScan(source, counts, {k: v for k, v in samples.items() if v})
