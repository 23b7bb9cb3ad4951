"""The supervisor's end of the telemetry channel: a UDP socket that never trusts what it reads.

Messages larger than 8 KiB, not JSON, not an object, or missing/ill-typed required fields are dropped
and counted; nothing a rank sends can crash the supervisor.
"""

from __future__ import annotations

import json
import math
import socket
from typing import Any

MAX_MESSAGE = 8192
TYPES = {"hb", "step", "event", "rank_exit"}
REQUIRED: dict[str, type | tuple[type, ...]] = {"type": str, "rank": int, "attempt": int, "t": (int, float)}


def validate(raw: bytes) -> dict[str, Any] | None:
    """The message as a dict if well-formed, else None."""
    if len(raw) > MAX_MESSAGE:
        return None
    try:
        msg = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(msg, dict):
        return None
    for key, typ in REQUIRED.items():
        if not isinstance(msg.get(key), typ) or isinstance(msg.get(key), bool):
            return None
    if msg["type"] not in TYPES or not 0 <= msg["rank"] < 1 << 20:
        return None
    if not math.isfinite(float(msg["t"])):
        return None
    if msg["type"] == "step" and not isinstance(msg.get("step"), int):
        return None
    if msg["type"] == "event" and not isinstance(msg.get("kind"), str):
        return None
    return msg


class TelemetryServer:
    """Binds a UDP port (loopback by default) and hands out validated messages."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.rejected = 0
        self.received = 0

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def drain(self, limit: int = 100_000) -> list[dict[str, Any]]:
        """Every message waiting now (non-blocking)."""
        out = []
        for _ in range(limit):
            try:
                raw = self.sock.recv(MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                break
            msg = validate(raw)
            if msg is None:
                self.rejected += 1
            else:
                self.received += 1
                out.append(msg)
        return out

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
