"""The addresses a Slurm task uses to be reached by the other nodes: never the hostname's.

Why: Debian maps a host's own name to 127.0.1.1, so anything that finds "my address" by resolving the
hostname tells its peers to dial their own loopback (gloo does exactly that without GLOO_SOCKET_IFNAME).
What works on any cluster is the routing table: the local address of the route toward the supervisor's
advertised address is on the network the supervisor, and so the other nodes, reach this node through.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import subprocess

SIOCGIFADDR = 0x8915


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr == "localhost"


def is_loopback_ip(addr: str) -> bool:
    """A literal loopback address (what a controller declares for nodes on one host), not a name."""
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def split_host(addr: str) -> str:
    """HOST of ``HOST:PORT`` or ``[V6]:PORT``."""
    host = addr.rpartition(":")[0] if ":" in addr else addr
    return host.strip("[]")


def route_source(dest: str) -> str | None:
    """This host's source address for packets to ``dest`` (a UDP connect sends nothing; it asks the
    routing table); None when there is no route or ``dest`` does not resolve."""
    try:
        infos = socket.getaddrinfo(dest, 9, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(sockaddr)
            addr = str(s.getsockname()[0])
    except (OSError, IndexError):
        return None
    return None if addr in ("0.0.0.0", "::") else addr


def _ipv4_of(ifname: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def interface_of(addr: str) -> str | None:
    """The interface that holds the IPv4 ``addr`` (its primary address), else None."""
    for _, name in socket.if_nameindex():
        if _ipv4_of(name) == addr:
            return name
    return None


def resolve(host: str) -> str | None:
    try:
        return socket.getaddrinfo(host, None, family=socket.AF_INET)[0][4][0]
    except (OSError, IndexError):
        return None


def controller_node_addr(node: str) -> str | None:
    """NodeAddr of ``node`` as the controller knows it; None when it cannot be asked."""
    try:
        out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for token in out.split():
        if token.startswith("NodeAddr="):
            return token.split("=", 1)[1] or None
    return None


def link_env(toward: str, netif_if_namespaced: str | None = None) -> dict[str, str]:
    """GLOO/NCCL socket interfaces (and the node's own address) from the route toward ``toward``; empty
    when that route is loopback (every rank on one host: nothing to choose). ``netif_if_namespaced``: the
    local cluster's node link, which chaos may take down (ORCH_NODE_NETIF)."""
    src = route_source(toward)
    if src is None or is_loopback(src):
        return {}
    env = {"ORCH_NODE_ADDR": src}
    ifname = interface_of(src)
    if ifname is not None:
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = ifname
    if netif_if_namespaced:
        env["ORCH_NODE_NETIF"] = netif_if_namespaced
    return env
