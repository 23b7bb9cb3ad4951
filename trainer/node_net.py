"""What a rank's chaos and a node agent do to the node's own network link: take it down (a partition),
throttle it (a slow link), heal it. The node side of :mod:`orchestrator.netns`, which builds the
namespaced nodes; here so that the trainer acts on its link without importing the orchestrator.
Every command is an argv list (nothing reaches a shell) with a timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess

IP_TIMEOUT_S = 10.0


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message carries its argv and stderr."""


def ip_binary() -> str | None:
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.path.exists(p)), None)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (argv, no shell, bounded)."""
    argv = [ip_binary() or "ip", *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and res.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


NETIF_ENV = "ORCH_NODE_NETIF"  # set in a namespaced node's agent (and so its ranks): the link's name


def node_netif() -> str | None:
    """The node's link when this process runs in a namespaced node, else None (plain processes)."""
    return os.environ.get(NETIF_ENV) or None


def tc_binary() -> str:
    return shutil.which("tc") or next((p for p in ("/usr/sbin/tc", "/sbin/tc") if os.path.exists(p)), "tc")


def set_link(ifname: str, up: bool) -> None:
    """Bring the node's link down (a partition: processes keep running) or back up."""
    ip("link", "set", ifname, "up" if up else "down")


def shape(ifname: str, rate_kbit: int) -> None:
    """A slow link: a token-bucket filter on the node's egress (netem is not in every kernel; tbf is)."""
    burst = max(1600, rate_kbit * 1000 // 8 // 100)  # bytes: 10 ms of traffic, at least one packet
    argv = [tc_binary(), "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", f"{rate_kbit}kbit",
            "burst", str(burst), "latency", "200ms"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if res.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {res.stderr.strip()}")


def unshape(ifname: str) -> None:
    subprocess.run([tc_binary(), "qdisc", "del", "dev", ifname, "root"], capture_output=True,
                   timeout=IP_TIMEOUT_S)


def heal(ifname: str) -> None:
    """Undo any partition or slow link (the node agent does this when an attempt's ranks are gone)."""
    try:
        set_link(ifname, True)
        unshape(ifname)
    except (NetnsError, subprocess.TimeoutExpired, OSError):
        pass
