"""Simulated nodes that are hosts: one Linux network namespace per node on a private bridge.

Why: with every node on one loopback, an address mistake (telemetry bound to 127.0.0.1, MASTER_ADDR
pointing at the wrong host) is invisible in tests. Here each node has its own loopback and its own
address on a bridge in the root namespace; the supervisor listens on the bridge address, exactly as a
login node listens on the cluster network. The file system stays shared, like NFS on a real cluster.

Each :class:`NodeNetwork` owns one /24 of ``10.213.0.0/16`` (chosen under a lock so concurrent runs on
one machine never share a subnet), a bridge and one namespace + veth pair per node; it removes them on
``close``. Names carry the owner's pid, so ``cleanup_stale`` can remove what a crashed run left behind.
Every ``ip`` call is an argv list (nothing reaches a shell) with a timeout.
"""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.node_net import NETIF_ENV, NetnsError, ip, ip_binary

NS_PREFIX = "orch-"
SUPERNET = ipaddress.ip_network("10.213.0.0/16")
LOCK_FILE = Path("/run/lock/orch-netns.lock")
NODE_IF = "eth0"  # the node's side of its veth pair, inside its namespace
_counter = itertools.count()
_NS_RE = re.compile(r"^orch-([0-9a-f]+)x[0-9a-f]+-n\d+$")
_IF_RE = re.compile(r"^o[bvp]([0-9a-f]+)x[0-9a-f]+(n\d+)?$")


def unavailable_reason() -> str | None:
    """None when namespaced nodes can be built here, else why not (shown to the user once)."""
    if os.environ.get("ORCH_LOCAL_NETNS", "").lower() in ("0", "off", "no", "false"):
        return "ORCH_LOCAL_NETNS=0"
    if os.geteuid() != 0:
        return "not running as root"
    if ip_binary() is None:
        return "iproute2 ('ip') is not installed"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove namespaces and links whose owning process is gone (a crashed run); returns their names."""
    removed = []
    for name in ip("netns", "list", check=False).stdout.split():
        m = _NS_RE.match(name)
        if m and not _pid_alive(int(m.group(1), 16)):
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _IF_RE.match(name)
        if m and not _pid_alive(int(m.group(1), 16)):
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _used_subnets() -> set[ipaddress.IPv4Network]:
    out = set()
    for line in ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            out.add(ipaddress.ip_interface(m.group(1)).network)
    return out


@dataclass
class NodeNetwork:
    """A bridge and one namespace per node; ``addr(node)`` is the node's address on the bridge."""

    nodes: list[str]
    token: str = field(default_factory=lambda: f"{os.getpid():x}x{next(_counter):x}")
    subnet: ipaddress.IPv4Network | None = None
    created: list[str] = field(default_factory=list)  # namespaces, for close()
    closed: bool = False

    @property
    def bridge(self) -> str:
        return f"ob{self.token}"

    def ns(self, node: str) -> str:
        return f"{NS_PREFIX}{self.token}-n{self.nodes.index(node)}"

    def ns_path(self, node: str) -> str:
        """The node's namespace file (what ``ip netns add`` made): what ``setns`` joins."""
        return f"/run/netns/{self.ns(node)}"

    def host_if(self, node: str) -> str:
        """The root-namespace end of the node's veth pair, on the bridge."""
        return f"ov{self.token}n{self.nodes.index(node)}"

    @property
    def bridge_addr(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def addr(self, node: str) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 2 + self.nodes.index(node))

    def exec_argv(self, node: str) -> list[str]:
        """Prefix that runs a command inside the node (``ip netns exec`` execs: the pid is kept)."""
        return [ip_binary() or "ip", "netns", "exec", self.ns(node)]

    def create(self) -> None:
        """Build the bridge and every node's namespace; on failure, remove what was built."""
        if len(self.nodes) > 250 or len(self.host_if(self.nodes[-1])) > 15:
            raise NetnsError(f"{len(self.nodes)} nodes do not fit one /24 or interface names")
        cleanup_stale()
        try:
            with _global_lock():
                self.subnet = self._free_subnet()
                ip("link", "add", self.bridge, "type", "bridge")
                ip("addr", "add", f"{self.bridge_addr}/24", "dev", self.bridge)
                ip("link", "set", self.bridge, "up")
            for node in self.nodes:
                self._add_node(node)
        except (NetnsError, subprocess.TimeoutExpired):
            self.close()
            raise

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = _used_subnets()
        for net in SUPERNET.subnets(new_prefix=24):
            if not any(net.overlaps(u) for u in used):
                return net
        raise NetnsError(f"no free /24 left in {SUPERNET}")

    def _add_node(self, node: str) -> None:
        ns, host_if, peer = self.ns(node), self.host_if(node), f"op{self.token}n{self.nodes.index(node)}"
        ip("netns", "add", ns)
        self.created.append(ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        ip("link", "set", host_if, "master", self.bridge, "up")
        ip("-n", ns, "link", "set", peer, "name", NODE_IF)
        ip("-n", ns, "addr", "add", f"{self.addr(node)}/24", "dev", NODE_IF)
        ip("-n", ns, "link", "set", NODE_IF, "up")
        ip("-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        """Remove every namespace (their veth pairs go with them) and the bridge. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for ns in self.created:
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.bridge, check=False)


class _global_lock:
    """An exclusive flock on LOCK_FILE while a subnet is chosen and claimed (bounded wait)."""

    def __enter__(self) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + 30.0
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise NetnsError(f"{LOCK_FILE} held for 30 s by another run") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def node_env() -> dict[str, str]:
    """Environment of a namespaced node's agent (and so its ranks): the link's name, and the interface
    gloo and NCCL must use. Without it gloo resolves the hostname (often 127.0.0.1 in /etc/hosts) and
    tells its peers to connect to their own loopback, exactly the bug a real multi-host cluster shows."""
    return {NETIF_ENV: NODE_IF, "GLOO_SOCKET_IFNAME": NODE_IF, "NCCL_SOCKET_IFNAME": NODE_IF}
