"""The supervisor <-> node agent control channel across hosts: TCP, mutual HMAC authentication, then the
agents' line-JSON protocol with every line authenticated.

Why: on Slurm the agents run on other machines, so the local backend's stdin/stdout pipes do not reach
them. Each agent dials the supervisor's hub (bound and advertised like telemetry) and both sides prove
they hold the run's key (``RUN_DIR/telemetry.key``) without sending it:

1. hub -> agent  ``{"hello": PROTO, "nonce": Nh}``
2. agent -> hub  ``{"node": N, "job": J, "nonce": Na, "mac": HMAC(key, "agent|Nh|Na|N|J")}``
3. hub -> agent  ``{"mac": HMAC(key, "hub|Na|Nh|N|J")}``

``J`` is the Slurm job (allocation) the agent runs in: the hub takes only agents of the allocation it
currently expects, so a stale agent of an earlier allocation (still running on a node that came back,
or a copy left by a cancel that has not landed yet) holds the key but is refused.

Fresh nonces on both sides make a recorded handshake useless. Afterwards each line is
``hex(HMAC(session, direction | seq | payload)) payload`` with ``session = HMAC(key, "session|Nh|Na")``
and a per-direction counter, so a line cannot be forged, replayed or reordered by anyone on the network.
Stdlib only (the agent imports it before torch).
"""

from __future__ import annotations

import hmac
import json
import os
import select
import socket
import threading
import time
from typing import Any

PROTO = "orch-agent/1"
MAX_LINE = 1 << 20
HANDSHAKE_TIMEOUT_S = 10.0


class LinkError(RuntimeError):
    """The peer failed the handshake, sent a line with a bad MAC, or the connection broke."""


def _mac(key: bytes, *parts: str) -> str:
    return hmac.digest(key, "|".join(parts).encode(), "sha256").hex()


def _read_line(sock: socket.socket, deadline: float) -> dict[str, Any]:
    """One plain JSON line of the handshake (byte by byte: nothing after it may be swallowed)."""
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or len(buf) > 4096:
            raise LinkError("handshake: no complete line in time")
        sock.settimeout(left)
        try:
            b = sock.recv(1)
        except OSError as exc:
            raise LinkError(f"handshake: {exc}") from None
        if not b:
            raise LinkError("handshake: connection closed")
        buf += b
    try:
        msg = json.loads(buf)
    except ValueError:
        raise LinkError("handshake: not JSON") from None
    if not isinstance(msg, dict):
        raise LinkError("handshake: not an object")
    return msg


def _send_line(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


class Link:
    """One authenticated connection; ``send`` and ``read`` never block for long."""

    def __init__(self, sock: socket.socket, session: bytes, out_dir: str, in_dir: str, peer: str) -> None:
        sock.settimeout(10.0)  # sends of a few hundred bytes; a peer that stops reading is dead
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.session, self.out_dir, self.in_dir, self.peer = sock, session, out_dir, in_dir, peer
        self.out_seq = self.in_seq = 0
        self.send_lock = threading.Lock()  # the supervisor's background link probe sends too
        self.buf = b""
        self.closed: str | None = None  # why, once closed

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any]) -> bool:
        if self.closed:
            return False
        payload = json.dumps(msg, separators=(",", ":"))
        try:
            with self.send_lock:  # sequence number and bytes on the wire in the same order
                tag = _mac(self.session, self.out_dir, str(self.out_seq), payload)
                self.out_seq += 1
                self.sock.sendall(f"{tag} {payload}\n".encode())
            return True
        except OSError as exc:
            self.close(f"send failed: {exc}")
            return False

    def read(self) -> list[dict[str, Any]]:
        """Every complete, authenticated message available now; a bad line closes the link."""
        out: list[dict[str, Any]] = []
        while not self.closed and select.select([self.sock], [], [], 0)[0]:
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                self.close(f"recv failed: {exc}")
                break
            if not chunk:
                self.close("connection closed by the peer")
                break
            self.buf += chunk
            if len(self.buf) > MAX_LINE:
                self.close("line too long")
        while b"\n" in self.buf and not self.closed:
            line, self.buf = self.buf.split(b"\n", 1)
            msg = self._verify(line)
            if msg is not None:
                out.append(msg)
        return out

    def _verify(self, line: bytes) -> dict[str, Any] | None:
        tag, _, payload = line.decode(errors="replace").partition(" ")
        if not hmac.compare_digest(tag, _mac(self.session, self.in_dir, str(self.in_seq), payload)):
            self.close("bad MAC (forged, replayed or reordered line)")
            return None
        self.in_seq += 1
        try:
            msg = json.loads(payload)
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def close(self, why: str = "closed") -> None:
        if self.closed is None:
            self.closed = why
        try:
            self.sock.close()
        except OSError:
            pass


def dial(addr: str, key: bytes, node: str, timeout_s: float = HANDSHAKE_TIMEOUT_S, job: str = "") -> Link:
    """The agent's side: connect to the hub at ``host:port`` and authenticate both ways, naming the
    allocation ``job`` it belongs to (bound into the MAC)."""
    host, _, port = addr.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        hello = _read_line(sock, deadline)
        if hello.get("hello") != PROTO or not isinstance(hello.get("nonce"), str):
            raise LinkError(f"handshake: unexpected greeting {str(hello)[:80]}")
        nh, na = hello["nonce"], os.urandom(16).hex()
        _send_line(sock, {"node": node, "job": job, "nonce": na, "mac": _mac(key, "agent", nh, na, node, job)})
        answer = _read_line(sock, deadline)
        if answer.get("refused"):
            raise LinkError(f"handshake: refused by the hub: {str(answer['refused'])[:200]}")
        if not hmac.compare_digest(str(answer.get("mac", "")), _mac(key, "hub", na, nh, node, job)):
            raise LinkError("handshake: the hub does not hold the run's key")
    except BaseException:
        sock.close()
        raise
    return Link(sock, bytes.fromhex(_mac(key, "session", nh, na)), "a2h", "h2a", addr)


def _bind(host: str, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=64)


class AgentHub:
    """The supervisor's side: listens on ``bind``, tells agents ``advertise:port``, authenticates each."""

    def __init__(self, key: bytes, bind: str, advertise: str, port: int = 0) -> None:
        """``port``: the journaled one when a resumed supervisor takes its agents back."""
        self.key = key
        self.server = _bind(bind, port)
        self.server.setblocking(False)
        port = self.server.getsockname()[1]
        self.address = f"[{advertise}]:{port}" if ":" in advertise else f"{advertise}:{port}"
        self.rejected: list[str] = []  # why each refused connection was refused
        self.expect_job: str | None = None  # the current allocation; None: any (no allocation yet)

    def fileno(self) -> int:
        return self.server.fileno()

    def accept(self, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> list[tuple[str, Link]]:
        """Every pending connection that authenticates, as (node, link); others are closed and counted."""
        out: list[tuple[str, Link]] = []
        while True:
            try:
                sock, peer = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return out
            try:
                out.append(self._handshake(sock, f"{peer[0]}:{peer[1]}", timeout_s))
            except (LinkError, OSError) as exc:
                self.rejected.append(f"{peer[0]}: {exc}")
                sock.close()

    def _handshake(self, sock: socket.socket, peer: str, timeout_s: float) -> tuple[str, Link]:
        deadline = time.monotonic() + timeout_s
        nh = os.urandom(16).hex()
        _send_line(sock, {"hello": PROTO, "nonce": nh})
        claim = _read_line(sock, deadline)
        node, na, job = str(claim.get("node", "")), str(claim.get("nonce", "")), str(claim.get("job", ""))
        if not node or len(na) < 16 or not hmac.compare_digest(str(claim.get("mac", "")),
                                                                _mac(self.key, "agent", nh, na, node, job)):
            raise LinkError(f"handshake: {node or '?'} does not hold the run's key")
        if self.expect_job is not None and job != self.expect_job:  # proven, but of another allocation
            _send_line(sock, {"refused": f"job {job or '?'} is not the current allocation {self.expect_job}"})
            raise LinkError(f"handshake: {node} is an agent of job {job or '?'}, not of the current "
                            f"allocation {self.expect_job}")
        _send_line(sock, {"mac": _mac(self.key, "hub", na, nh, node, job)})
        return node, Link(sock, bytes.fromhex(_mac(self.key, "session", nh, na)), "h2a", "a2h", peer)

    def close(self) -> None:
        self.server.close()
