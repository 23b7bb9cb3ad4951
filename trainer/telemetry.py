"""Telemetry from a rank to the supervisor: small sealed JSON datagrams over UDP that never block training.

A heartbeat thread proves the process is alive even while the main thread is stuck in a collective,
which is how the supervisor tells a hang ("alive, no progress") from a crash ("gone").

Every datagram carries an HMAC under the run's key (``ORCH_TELEMETRY_KEY_FILE``) and a sequence number
from one counter per process (``sid``): the heartbeat thread and the main thread share it under a lock
that also covers the send, so datagrams leave in sequence order and none looks like a replay.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

from trainer.telemetry_auth import HEADER, key_from_env, seal

MAX_DATAGRAM = 8192
MAX_PAYLOAD = MAX_DATAGRAM - HEADER


class Telemetry:
    """Sends ``hb``, ``step`` and ``event`` messages to ``ORCH_TELEMETRY_ADDR`` (host:port)."""

    def __init__(self, addr: str | None, rank: int, node: str, attempt: int, key: bytes | None = None) -> None:
        self.rank, self.node, self.attempt = rank, node, attempt
        self.step = 0
        self.phase = "start"  # step | checkpoint | eval | restore: a long save is not a hang
        self._target: tuple[str, int] | None = None
        self._key = key if key is not None else key_from_env()
        if addr and self._key is None:
            print("telemetry: no key (ORCH_TELEMETRY_KEY_FILE); nothing will be sent", file=sys.stderr)
        elif addr:
            host, _, port = addr.rpartition(":")
            self._target = (host, int(port))
        self.sid = os.urandom(8).hex()
        self._seq = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._hb: threading.Thread | None = None

    def send(self, type_: str, **fields: Any) -> None:
        if self._target is None or self._key is None:
            return
        msg = {"type": type_, "rank": self.rank, "node": self.node, "attempt": self.attempt,
               "t": time.time(), **fields}
        with self._lock:  # one sequence, sent in order, whichever thread sends
            self._seq += 1
            msg["sid"], msg["seq"] = self.sid, self._seq
            data = json.dumps(msg, default=float).encode()
            if len(data) > MAX_PAYLOAD:
                data = json.dumps({**{k: msg[k] for k in ("type", "rank", "node", "attempt", "t", "sid", "seq")},
                                   "truncated": True}).encode()
            try:
                self._sock.sendto(seal(self._key, data), self._target)
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
