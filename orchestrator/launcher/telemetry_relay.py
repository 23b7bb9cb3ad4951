"""The node agent's telemetry relay: its ranks' heartbeats and step rows leave the node as one datagram.

Why: at 16,384 ranks, one datagram per rank per heartbeat and per step is ~49k datagrams/s at the
supervisor, and the per-datagram accept path (receive, HMAC, JSON, schema) costs about two cores. The
ranks of a node send to this relay on the node's loopback instead; every ``interval_s`` (the heartbeat
interval) it sends the supervisor one ``hbs`` datagram per node with, for each rank heard since the
supervisor last learnt of it, how long ago it was last heard (so a rank whose heartbeats stop is still
seen to stop, per rank, at the supervisor's hang timeout: its last-heard time there simply ages), and the
step rows received since. Rows leave early once every rank of the node has one pending; a rank whose row
went within the last interval needs no entry, so in steady training about two datagrams per node per
second reach the supervisor instead of three per rank. Everything else (events, exits) is forwarded at once, unchanged (the rank's own seal and
sequence), after the pending rows, so the supervisor sees each rank's messages in the order they were sent.

Trust: the relay checks each rank's datagram exactly as the supervisor does (HMAC under the run key,
schema, per-sender sequence) and counts what it drops; the aggregate is sealed with the same key and
carries its own sender id and sequence, which the supervisor checks as it checks a rank's (a replayed
aggregate is dropped and counted, whatever it carries). A forged heartbeat on the node's loopback cannot keep a stopped rank alive.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from orchestrator.telemetry_columns import pack_entries, pack_rows
from orchestrator.telemetry_server import accept_payload
from trainer.telemetry import MAX_PAYLOAD
from trainer.telemetry_auth import ReplayGuard, seal, unseal

AGGREGATE_TYPE = "hbs"
BATCHED_MAX = 2048  # a larger step row (many extra fields) is forwarded alone, as the rank sealed it


def aggregate_payload(node: str, attempt: int, rank: int, sid: str, seq: int, entries: list[list[Any]],
                      rows: list[dict[str, Any]], rejected: dict[str, int] | None = None) -> bytes:
    """The aggregate's JSON (to be sealed): ``rank`` is the node's first rank (the replay guard's key with
    ``sid``); ``ranks`` the entries [rank, seconds since last heard, step, pid] packed
    (orchestrator.telemetry_columns), ``phases`` their phases when any is not "step"; ``rows`` rank 0's
    whole step messages (the run's loss, lr, ...); ``cols`` the other ranks' rows packed as [rank, step,
    compute seconds] in arrival order, which is all the supervisor reads of them (progress, the step's row,
    stragglers); ``rejected`` what the relay dropped since its last report, by reason."""
    lead = [r for r in rows if r["rank"] == 0]
    short = [(r["rank"], r["step"], _secs(r)) for r in rows if r["rank"] != 0]
    msg: dict[str, Any] = {"type": AGGREGATE_TYPE, "rank": rank, "node": node, "attempt": attempt, "t": time.time(),
                           "sid": sid, "seq": seq, "ranks": pack_entries(entries) if entries else "",
                           "rows": lead, "cols": pack_rows(short) if short else ""}
    if any(e[4] != "step" for e in entries):
        msg["phases"] = [e[4] for e in entries]
    if rejected:
        msg["rejected"] = rejected
    return json.dumps(msg, separators=(",", ":"), default=float).encode()


def _secs(row: dict[str, Any]) -> float | None:
    t = row.get("compute_time", row.get("step_time"))
    return float(t) if type(t) in (int, float) else None


class NodeRelay:
    """One attempt's relay on one node: bind, then call ``pump`` whenever its socket is readable or a
    tick passes."""

    def __init__(self, key: bytes, target: str, node: str, attempt: int, ranks: list[int], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        host, _, port = target.rpartition(":")
        self.key, self.target, self.node, self.attempt = key, (host, int(port)), node, attempt
        self.ranks, self.interval_s, self.clock = set(ranks), interval_s, clock
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.guard = ReplayGuard()
        self.heard: dict[int, list[Any]] = {}  # rank -> [last heard (clock), step, pid, phase]
        self.told: dict[int, tuple[float, Any]] = {}  # rank -> (last heard, (pid, phase)) as the supervisor knows it
        self.rows: list[dict[str, Any]] = []  # step rows not yet sent, in arrival order
        self.rejected: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        self.sid, self.seq, self.sent, self.taken = "r" + os.urandom(8).hex(), 0, 0, 0
        self.next_flush = clock() + interval_s

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def pump(self) -> None:
        """Take in what the ranks sent, then send the aggregate if its interval has passed."""
        while True:
            try:
                raw = self.sock.recv(MAX_PAYLOAD + 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return
            self.taken += 1
            self._take(raw, self.clock())
        if self.clock() >= self.next_flush:
            self.flush()

    def _take(self, raw: bytes, now: float) -> None:
        payload, reason = unseal(self.key, raw)
        msg, reason = accept_payload(payload, reason, self.guard)
        if msg is None or msg["rank"] not in self.ranks:
            self.rejected[reason or "malformed"] += 1
            return
        rank, kind = msg["rank"], msg["type"]
        seen = self.heard.setdefault(rank, [now, 0, None, "start"])
        seen[0] = now
        if kind == "hb":
            seen[1:] = [msg.get("step"), msg.get("pid"), msg.get("phase")]
        elif kind == "step" and len(raw) <= BATCHED_MAX:
            self.rows.append(msg)
            if len({r["rank"] for r in self.rows}) >= len(self.ranks):
                self.flush_rows()  # the whole node finished a step: no reason to hold its rows
        else:
            self.flush_rows()  # the rows this rank sent before come first (the supervisor checks its sequence)
            self._send_raw(raw)

    def forget(self, rank: int) -> None:
        """A rank exited: its silence from now on is no hang (the exit report says what happened)."""
        self.flush_rows()
        self.heard.pop(rank, None)
        self.told.pop(rank, None)
        self.ranks.discard(rank)

    def flush(self) -> None:
        """Send the aggregate now: the pending rows (split to fit a datagram) and the age of every rank
        heard since the supervisor last learnt of it, once that is an interval old or the rank's phase
        changed. A rank nobody hears is left out: its last-heard time at the supervisor ages by itself."""
        now = self.clock()
        self.next_flush = now + self.interval_s
        entries = [[r, round(now - s[0], 3), s[1], s[2], s[3]] for r, s in sorted(self.heard.items())
                   if self._due(r, s, now)]
        new = {k: n - self._reported[k] for k, n in self.rejected.items() if n > self._reported[k]}
        self._reported = Counter(self.rejected)
        rows, self.rows = self.rows, []
        if entries or rows or new:
            self._conveyed(rows, entries)
            self._send_parts(entries, rows, new)

    def _due(self, rank: int, seen: list[Any], now: float) -> bool:
        told = self.told.get(rank)
        return (told is None or (seen[2], seen[3]) != told[1]
                or (seen[0] > told[0] and now - told[0] >= 0.99 * self.interval_s))

    def _conveyed(self, rows: list[dict[str, Any]], entries: list[list[Any]]) -> None:
        """What the supervisor now knows of each rank: when it was last heard (a row or an entry says),
        its pid and phase (only an entry says)."""
        for r in {row["rank"] for row in rows} | {e[0] for e in entries}:
            seen, told = self.heard.get(r), self.told.get(r)
            if seen is not None:
                self.told[r] = (seen[0], told[1] if told is not None else None)
        for e in entries:
            self.told[e[0]] = (self.told[e[0]][0], (e[3], e[4]))

    def flush_rows(self) -> None:
        """Send the pending rows now, without rank entries (the rows themselves say their ranks are alive)."""
        rows, self.rows = self.rows, []
        if rows:
            self._conveyed(rows, [])
            self._send_parts([], rows, {})

    def _send_parts(self, entries: list[list[Any]], rows: list[dict[str, Any]], rejected: dict[str, int]) -> None:
        self.seq += 1
        data = aggregate_payload(self.node, self.attempt, min(self.ranks | {r[0] for r in entries}, default=0),
                                 self.sid, self.seq, entries, rows, rejected)
        if len(data) <= MAX_PAYLOAD or len(rows) <= 1:
            self._send_raw(seal(self.key, data))
            return
        self.seq -= 1  # too large: the same content in two datagrams, rows in order
        half = len(rows) // 2
        self._send_parts(entries, rows[:half], rejected)
        self._send_parts([], rows[half:], {})

    def _send_raw(self, data: bytes) -> None:
        try:
            self.out.sendto(data, self.target)
            self.sent += 1
        except OSError:
            pass  # the supervisor may be gone; the ranks must not care

    def close(self) -> None:
        self.sock.close()
        self.out.close()
