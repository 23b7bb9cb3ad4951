"""Node health: can this node hold and write checkpoints, and is it under memory, load or kernel-level
stress? Everything a rank needs besides its GPU, checked in a second or so before a launch.

The write round trip is the check that matters most: a full disk, a read-only remount after an ext4
error, a stale NFS/Lustre mount or a missing shared file system all pass a ``statvfs`` but fail here.
All inputs (the writer, disk and memory readers, the kernel log) are parameters, so tests can inject a
read-only file system or a near-full disk without root.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from health.probes.kernel_log import KernelLogScan, read_kernel_log, scan_kernel_log
from health.probes.result import ProbeResult, Verdict, worst_verdict

Problem = tuple[Verdict, str, str | None]  # verdict, message, fault kind


@dataclass(frozen=True)
class NodeThresholds:
    min_free_bytes: int = 2 << 30
    min_free_frac: float = 0.05
    min_free_inodes_frac: float = 0.02
    max_mem_used_frac: float = 0.95
    max_swap_used_frac: float = 0.5
    max_load_per_cpu: float = 4.0
    max_write_s: float = 5.0  # a round trip slower than this is a sick file system
    kernel_log_max_age_s: float = 86_400.0


@dataclass(frozen=True)
class DiskStats:
    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int


def disk_stats(path: Path) -> DiskStats:
    st = os.statvfs(path)
    return DiskStats(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files, st.f_favail)


def write_round_trip(directory: Path, size: int = 1 << 20) -> None:
    """Write, fsync, read back and compare a file, then remove it; raises OSError on any failure."""
    payload = os.urandom(size)
    path = directory / f".orchestrator-probe-{uuid.uuid4().hex}"
    try:
        with open(path, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        with open(path, "rb") as f:
            if f.read() != payload:
                raise OSError(f"read back differs from what was written to {path}")
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _existing(path: Path) -> Path:
    """The checkpoint dir may not exist before the first run: probe the mount that will hold it."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_disk(target: Path, th: NodeThresholds, stats: Callable[[Path], DiskStats],
                writer: Callable[[Path], None]) -> tuple[dict[str, Any], list[Problem]]:
    ev: dict[str, Any] = {"checked_dir": str(target)}
    probs: list[Problem] = []
    try:
        d = stats(target)
    except OSError as e:
        return {**ev, "statvfs": f"error: {e}"}, [("failed", f"cannot stat {target}: {e}", "io_error")]
    free_frac = d.free_bytes / d.total_bytes if d.total_bytes else 0.0
    inode_frac = d.free_inodes / d.total_inodes if d.total_inodes else 1.0  # 0 inodes: not tracked
    ev.update(free_gib=round(d.free_bytes / 2**30, 2), free_frac=round(free_frac, 4),
              free_inodes_frac=round(inode_frac, 4))
    if d.free_bytes < th.min_free_bytes or free_frac < th.min_free_frac:
        probs.append(("failed", f"only {d.free_bytes / 2**30:.2f} GiB ({free_frac:.1%}) free in {target}",
                      "disk_full"))
    if inode_frac < th.min_free_inodes_frac:
        probs.append(("failed", f"only {inode_frac:.1%} inodes free in {target}", "disk_full"))
    t0 = time.perf_counter()
    try:
        writer(target)
    except OSError as e:
        ev["write_round_trip"] = f"error: {e}"
        return ev, probs + [("failed", f"write+fsync+read in {target} failed: {e}", "io_error")]
    dt = time.perf_counter() - t0
    ev["write_round_trip_s"] = round(dt, 4)
    if dt > th.max_write_s:
        probs.append(("degraded", f"write round trip took {dt:.1f}s", None))
    return ev, probs


def _check_pressure(th: NodeThresholds, mem: Any, swap: Any, load: tuple[float, float, float],
                    cpus: int) -> tuple[dict[str, Any], list[Problem]]:
    mem_frac = 1.0 - mem.available / mem.total
    swap_frac = swap.used / swap.total if swap.total else 0.0
    ev = {"mem_used_frac": round(mem_frac, 4), "mem_available_gib": round(mem.available / 2**30, 2),
          "swap_used_frac": round(swap_frac, 4), "load_1m": round(load[0], 2), "cpus": cpus}
    probs: list[Problem] = []
    if mem_frac > th.max_mem_used_frac:
        probs.append(("degraded", f"memory {mem_frac:.0%} used", None))
    if swap_frac > th.max_swap_used_frac:
        probs.append(("degraded", f"swap {swap_frac:.0%} used", None))
    if load[0] / max(cpus, 1) > th.max_load_per_cpu:
        probs.append(("degraded", f"load {load[0]:.1f} on {cpus} CPUs", None))
    return ev, probs


_KERNEL_FAULTS: dict[str, tuple[Verdict, str]] = {
    "xid": ("degraded", "gpu_error"), "gpu_off_bus": ("failed", "gpu_error"),
    "io_error": ("degraded", "io_error"), "lustre": ("degraded", "lustre_error"),
}


def _check_kernel(scan: KernelLogScan) -> tuple[dict[str, Any], list[Problem]]:
    """Kernel-log hits are evidence, usually 'degraded': the lines may predate a repair we cannot see."""
    if scan.source is None:
        return {"kernel_log": "not readable here"}, []
    ev = {"kernel_log": {"source": scan.source, "counts": scan.counts, "samples": scan.samples}}
    probs: list[Problem] = [(v, f"kernel log: {scan.counts[k]} {k} lines", kind)
                            for k, (v, kind) in _KERNEL_FAULTS.items() if scan.counts.get(k)]
    return ev, probs


def probe_node(checkpoint_dir: str | Path, thresholds: NodeThresholds | None = None,
               node: str | None = None, writer: Callable[[Path], None] = write_round_trip,
               stats: Callable[[Path], DiskStats] = disk_stats,
               kernel_log: tuple[str | None, list[str]] | None = None) -> ProbeResult:
    """Check disk, memory, load and the kernel log on this node; inputs are injectable for tests."""
    th = thresholds or NodeThresholds()
    target = _existing(Path(checkpoint_dir))
    ev: dict[str, Any] = {"checkpoint_dir": str(checkpoint_dir)}
    d_ev, probs = _check_disk(target, th, stats, writer)
    p_ev, p_probs = _check_pressure(th, psutil.virtual_memory(), psutil.swap_memory(),
                                    os.getloadavg(), os.cpu_count() or 1)
    source, lines = kernel_log if kernel_log is not None else read_kernel_log()
    k_ev, k_probs = _check_kernel(scan_kernel_log(source, lines, th.kernel_log_max_age_s))
    ev.update(d_ev | p_ev | k_ev)
    probs += p_probs + k_probs
    verdict = worst_verdict([v for v, _, _ in probs]) if probs else "ok"
    kinds = [k for v, _, k in probs if v == verdict and k]
    ev["problems"] = [m for _, m, _ in probs]
    return ProbeResult("node", node or socket.gethostname(), verdict, ev, kinds[0] if kinds else None)
