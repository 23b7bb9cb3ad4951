"""The supervisor's end of the telemetry channel: a UDP socket that never trusts what it reads.

Every datagram must carry a valid HMAC under the run's key and a sequence number newer than the last
one from the same sender (:mod:`trainer.telemetry_auth`); then it must be well-formed JSON with the
required fields. Anything else is dropped and counted by reason, never acted on: nothing another user
on the network (or a buggy rank) sends can crash the supervisor or steer the run.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
from collections import Counter
from typing import Any

from orchestrator.telemetry_columns import unpack_entries, unpack_rows
from trainer.telemetry_auth import ReplayGuard, unseal

MAX_MESSAGE = 8192  # the whole datagram, header included
TYPES = {"hb", "step", "event", "rank_exit", "hbs"}  # hbs: a node agent's aggregate (telemetry_aggregate)
REQUIRED: dict[str, type | tuple[type, ...]] = {"type": str, "rank": int, "attempt": int, "t": (int, float)}
REJECT_REASONS = ("no_mac", "bad_mac", "replay", "malformed", "too_large")
REPORT_EVERY_S = 10.0  # at most one journal line about rejected datagrams this often


def validate(raw: bytes) -> dict[str, Any] | None:
    """The message (an authenticated payload) as a dict if well-formed, else None."""
    if len(raw) > MAX_MESSAGE:
        return None
    try:
        msg = json.loads(raw.decode())  # what the senders write (UTF-8): no encoding sniffing per datagram
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    return validate_obj(msg)


def validate_obj(msg: Any) -> dict[str, Any] | None:
    """A decoded message if it has the required fields, else None (also for rows inside an aggregate)."""
    if not isinstance(msg, dict):
        return None
    for key, typ in REQUIRED.items():
        value = msg.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            return None
    if msg["type"] not in TYPES or not 0 <= msg["rank"] < 1 << 20:
        return None
    if type(msg["t"]) is float and not math.isfinite(msg["t"]):  # an int is finite (float() of a huge one raises)
        return None
    if msg["type"] == "step" and not isinstance(msg.get("step"), int):
        return None
    if msg["type"] == "event" and not isinstance(msg.get("kind"), str):
        return None
    return msg


def accept_payload(payload: bytes | None, reason: str, guard: ReplayGuard) -> tuple[dict[str, Any] | None, str]:
    """After the MAC: (message, "") if well-formed and fresh, else (None, reason)."""
    if payload is None:
        return None, reason
    msg = validate(payload)
    if msg is None or not _sender_ok(msg):
        return None, "malformed"
    if not guard.fresh(msg["rank"], msg["attempt"], msg["sid"], msg["seq"]):
        return None, "replay"
    return msg, ""


def _lead_row(e: Any, attempt: int) -> dict[str, Any] | None:
    """Rank 0's whole step message inside an aggregate, or None if it is not one. The aggregate's MAC and
    sequence cover it; the relay checked the rank's own sequence on the node."""
    r = validate_obj(e)
    return r if r is not None and r["type"] == "step" and r["rank"] == 0 and r["attempt"] == attempt else None


def unpack_aggregate(msg: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """A node aggregate (``hbs``, from orchestrator.launcher.telemetry_relay), already authenticated and
    fresh: leaves its valid rank entries as an array on ``msg["ranks"]`` (their phases on
    ``msg["phases"]``, None when all are "step"), rank 0's valid step messages on ``msg["rows"]`` and the
    other valid rows as an array on ``msg["cols"]`` (orchestrator.telemetry_columns); returns (what it
    dropped of them, by reason; what the node's relay reports it dropped)."""
    msg["ranks"], msg["phases"], bad = unpack_entries(msg.get("ranks"), msg.get("phases"))
    msg["cols"], bad_rows = unpack_rows(msg.get("cols"))
    leads = msg.get("rows")
    leads = leads if type(leads) is list else []
    msg["rows"] = [r for r in (_lead_row(e, msg["attempt"]) for e in leads) if r is not None] if leads else leads
    bad += bad_rows + len(leads) - len(msg["rows"])
    rep = msg.pop("rejected", None)
    by_agent = ({k: v for k, v in rep.items() if k in REJECT_REASONS and type(v) is int and 0 < v < 1 << 20}
                if type(rep) is dict else {})
    return ({"malformed": bad} if bad else {}), by_agent


def _sender_ok(msg: dict[str, Any]) -> bool:
    seq, sid = msg.get("seq"), msg.get("sid")
    return isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 and isinstance(sid, str) \
        and 0 < len(sid) <= 64


class TelemetryServer:
    """Binds a UDP port and hands out authenticated, validated, fresh messages.

    ``host`` is the address bound, ``advertise`` the one the ranks are told (they differ when binding
    0.0.0.0 or behind an alias); ``address`` is ``advertise:port``.
    """

    def __init__(self, key: bytes, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None) -> None:
        self.key = key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.advertise = advertise
        self.guard = ReplayGuard()
        self.rejected = 0
        self.rejected_by: Counter[str] = Counter({r: 0 for r in REJECT_REASONS})
        self.received = 0
        self.last_rejected_from: str | None = None
        self.sources: dict[str, str] = {}  # node -> the source address of its last accepted datagram
        self._reported: Counter[str] = Counter()
        self._report_t: float | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def address(self) -> str:
        host = self.advertise or self.sock.getsockname()[0]
        return f"{host}:{self.port}"

    def drain(self, limit: int = 100_000) -> list[dict[str, Any]]:
        """Every acceptable message waiting now (non-blocking)."""
        out = []
        for _ in range(limit):
            try:
                raw, src = self.sock.recvfrom(MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                break
            msg, reason = self.accept(raw)
            if msg is None:
                self.reject(reason, src)
                continue
            self.received += 1
            self.sources[str(msg.get("node"))] = str(src[0])
            if msg["type"] == "hbs":
                self._unpack(msg, src)
            out.append(msg)
        return out

    def reject(self, reason: str, src: tuple[str, int] | None, n: int = 1) -> None:
        self.rejected += n
        self.rejected_by[reason] += n
        if src is not None:
            self.last_rejected_from = f"{src[0]}:{src[1]}"

    def _unpack(self, msg: dict[str, Any], src: tuple[str, int]) -> None:
        """A node aggregate: its entries and rows checked, the drops counted."""
        dropped, by_agent = unpack_aggregate(msg)
        for reason, n in dropped.items():
            self.reject(reason, src, n)
        for reason, n in by_agent.items():  # what the node's relay dropped on its loopback
            self.reject(reason, None, n)

    def accept(self, raw: bytes) -> tuple[dict[str, Any] | None, str]:
        """(message, "") or (None, reason); the MAC is checked before anything is parsed."""
        if len(raw) > MAX_MESSAGE:
            return None, "too_large"
        payload, reason = unseal(self.key, raw)
        return accept_payload(payload, reason, self.guard)

    def rejection_report(self, now: float, force: bool = False) -> dict[str, Any] | None:
        """Rejections since the last report, at most once per REPORT_EVERY_S (or now if ``force``);
        None when there is nothing new. One journal line per report, not one per datagram."""
        new = {r: n - self._reported[r] for r, n in self.rejected_by.items() if n > self._reported[r]}
        if not new:
            return None
        if not force and self._report_t is not None and now - self._report_t < REPORT_EVERY_S:
            return None
        self._reported = Counter(self.rejected_by)
        self._report_t = now
        return {"reasons": new, "total": self.rejected, "last_from": self.last_rejected_from}

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_address() -> str:
    """This host's address on the cluster network: its hostname's address, else the source address of
    the default route; loopback only when neither exists (then the ranks must run on this host)."""
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not is_loopback(addr):
            return addr
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 9))  # no packet is sent: this only asks the routing table
            addr = s.getsockname()[0]
            if addr and addr != "0.0.0.0":
                return str(addr)
    except OSError:
        pass
    return "127.0.0.1"


def endpoints(backend: str, bind_host: str | None, advertise_host: str | None,
              launcher_host: str | None) -> tuple[str, str]:
    """(bind, advertise) for the telemetry server.

    Config first; then the launcher's own network (the local cluster's bridge); then the backend's
    default: loopback for the local backend, the cluster address for Slurm (the ranks run elsewhere).
    """
    bind = bind_host or launcher_host or (cluster_address() if backend == "slurm" else "127.0.0.1")
    if advertise_host:
        return bind, advertise_host
    if bind in ("0.0.0.0", ""):
        return bind, launcher_host or cluster_address()
    return bind, bind
