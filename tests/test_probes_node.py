"""Node probe on real temp dirs, an injected failing writer (chmod does not stop root), a near-full
disk and kernel-log lines."""

from __future__ import annotations

import errno
from pathlib import Path

from health.probes.kernel_log import read_kernel_log, scan_kernel_log
from health.probes.node import DiskStats, NodeThresholds, probe_node

QUIET = (None, [])


def test_healthy_tmp_dir(tmp_path: Path) -> None:
    r = probe_node(tmp_path, node="n0", kernel_log=QUIET, thresholds=NodeThresholds(
        min_free_bytes=0, min_free_frac=0.0, max_mem_used_frac=1.0, max_swap_used_frac=1.0,
        max_load_per_cpu=1e9))
    assert r.verdict == "ok", r.evidence["problems"]
    assert r.evidence["write_round_trip_s"] >= 0 and list(tmp_path.iterdir()) == []


def test_missing_dir_checks_its_mount(tmp_path: Path) -> None:
    r = probe_node(tmp_path / "runs" / "x" / "checkpoints", kernel_log=QUIET,
                   thresholds=NodeThresholds(min_free_bytes=0, min_free_frac=0.0))
    assert r.evidence["checked_dir"] == str(tmp_path)


def test_read_only_filesystem(tmp_path: Path) -> None:
    def read_only(_: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    r = probe_node(tmp_path, writer=read_only, kernel_log=QUIET)
    assert (r.verdict, r.fault_kind) == ("failed", "io_error")
    assert "Read-only file system" in r.evidence["write_round_trip"]


def test_near_full_disk_and_inodes(tmp_path: Path) -> None:
    def nearly_full(_: Path) -> DiskStats:
        return DiskStats(total_bytes=100 << 30, free_bytes=1 << 30, total_inodes=1000, free_inodes=5)

    r = probe_node(tmp_path, stats=nearly_full, kernel_log=QUIET)
    assert (r.verdict, r.fault_kind) == ("failed", "disk_full")
    assert len([p for p in r.evidence["problems"] if "free in" in p]) == 2


def test_threshold_is_a_parameter(tmp_path: Path) -> None:
    r = probe_node(tmp_path, kernel_log=QUIET, thresholds=NodeThresholds(min_free_frac=0.9999))
    assert r.fault_kind == "disk_full"


def test_kernel_log_patterns_and_age() -> None:
    lines = ["[  100.000000] NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.",
             "[ 9000.000000] blk_update_request: I/O error, dev nvme0n1, sector 1234",
             "[ 9001.000000] LustreError: 11-0: scratch-OST0003: operation ost_write failed: rc = -107",
             "[ 9002.000000] usb 1-1: new high-speed USB device"]
    s = scan_kernel_log("test", lines, max_age_s=3600, uptime_s=10_000)
    assert s.counts["xid"] == 0 and s.counts["io_error"] == 1 and s.counts["lustre"] == 1
    s = scan_kernel_log("test", lines, max_age_s=None, uptime_s=10_000)
    assert s.counts["xid"] == 1 and s.counts["gpu_off_bus"] == 1


def test_kernel_log_lines_flag_the_node(tmp_path: Path) -> None:
    log = ("dmesg", ["[5.0] NVRM: Xid (PCI:0000:3b:00): 48, pid=7, DBE"])
    r = probe_node(tmp_path, kernel_log=log, thresholds=NodeThresholds(
        min_free_bytes=0, min_free_frac=0.0, max_load_per_cpu=1e9, kernel_log_max_age_s=1e12))
    assert r.verdict == "degraded" and r.fault_kind == "gpu_error"


def test_unreadable_sources_fall_through() -> None:
    def denied() -> list[str]:
        raise PermissionError("dmesg: read kernel buffer failed: Operation not permitted")

    assert read_kernel_log([("dmesg", denied), ("kern", lambda: ["x"])]) == ("kern", ["x"])
    assert read_kernel_log([("dmesg", denied)]) == (None, [])
