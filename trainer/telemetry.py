"""Telemetry from a rank to the supervisor: small JSON datagrams over UDP that never block training.

A heartbeat thread proves the process is alive even while the main thread is stuck in a collective,
which is how the supervisor tells a hang ("alive, no progress") from a crash ("gone").
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

MAX_DATAGRAM = 8192


class Telemetry:
    """Sends ``hb``, ``step`` and ``event`` messages to ``ORCH_TELEMETRY_ADDR`` (host:port)."""

    def __init__(self, addr: str | None, rank: int, node: str, attempt: int) -> None:
        self.rank, self.node, self.attempt = rank, node, attempt
        self.step = 0
        self.phase = "start"  # step | checkpoint | eval | restore: a long save is not a hang
        self._target: tuple[str, int] | None = None
        if addr:
            host, _, port = addr.rpartition(":")
            self._target = (host, int(port))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._hb: threading.Thread | None = None

    def send(self, type_: str, **fields: Any) -> None:
        if self._target is None:
            return
        msg = {"type": type_, "rank": self.rank, "node": self.node, "attempt": self.attempt,
               "t": time.time(), **fields}
        data = json.dumps(msg, default=float).encode()
        if len(data) > MAX_DATAGRAM:
            data = json.dumps({**{k: msg[k] for k in ("type", "rank", "node", "attempt", "t")},
                               "truncated": True}).encode()
        try:
            self._sock.sendto(data, self._target)
        except OSError:
            pass  # the supervisor may be gone; training must not care

    def event(self, kind: str, **fields: Any) -> None:
        self.send("event", kind=kind, **fields)

    def start_heartbeat(self, interval_s: float) -> None:
        def beat() -> None:
            while not self._stop.wait(interval_s):
                self.send("hb", step=self.step, pid=os.getpid(), phase=self.phase)
        self.send("hb", step=self.step, pid=os.getpid(), phase=self.phase)
        self._hb = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._hb.start()

    def close(self) -> None:
        self._stop.set()
        if self._hb is not None:
            self._hb.join(timeout=2)
        self._sock.close()
