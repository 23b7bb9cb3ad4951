"""Telemetry authentication without a run: the key file, the seal, replays, the thread-shared sequence,
the rate-limited report, the exporter's reason labels and the bind/advertise defaults."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.metrics.exporter import SnapshotCollector
from orchestrator.snapshot import RunSnapshot
from trainer.telemetry_auth import (TelemetryKeyError, create_or_load_key, key_from_env, key_path, read_key,
                                         seal, unseal)
from orchestrator.telemetry_server import REPORT_EVERY_S, TelemetryServer, endpoints
from trainer.telemetry import Telemetry

KEY = bytes(range(32))


def _msg(**over: object) -> bytes:
    m = {"type": "hb", "rank": 0, "attempt": 0, "t": 1.0, "sid": "s1", "seq": 1, **over}
    return json.dumps(m).encode()


def _drain_until(srv: TelemetryServer, n: int) -> list[dict]:
    """Drain until ``n`` datagrams were accepted or rejected (bounded; loopback loses nothing)."""
    out: list[dict] = []
    for _ in range(20_000):
        out += srv.drain()
        if len(out) + srv.rejected >= n:
            break
        os.sched_yield()
    return out


def test_key_is_owner_only_created_once_and_reused(tmp_path: Path) -> None:
    key = create_or_load_key(tmp_path)
    assert len(key) == 32 and stat.S_IMODE(key_path(tmp_path).stat().st_mode) == 0o600
    assert create_or_load_key(tmp_path) == key  # resume reuses it
    assert key_from_env({"ORCH_TELEMETRY_KEY_FILE": str(key_path(tmp_path))}) == key
    assert key_from_env({"ORCH_RUN_DIR": str(tmp_path)}) == key
    key_path(tmp_path).chmod(0o644)
    with pytest.raises(TelemetryKeyError, match="chmod 600"):
        read_key(key_path(tmp_path))
    assert key_from_env({"ORCH_RUN_DIR": str(tmp_path)}) is None


def test_unseal_names_the_reason() -> None:
    payload = _msg()
    assert unseal(KEY, seal(KEY, payload)) == (payload, "")
    assert unseal(KEY, payload) == (None, "no_mac")
    assert unseal(KEY, seal(bytes(32), payload)) == (None, "bad_mac")
    tampered = bytearray(seal(KEY, payload))
    tampered[-2] ^= 1
    assert unseal(KEY, bytes(tampered)) == (None, "bad_mac")


def test_server_drops_and_counts_unsigned_forged_and_replayed() -> None:
    srv = TelemetryServer(KEY)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = srv.sock.getsockname()
    forged_exit = _msg(type="rank_exit", rank=2, code=1, stderr_tail="Xid 79", seq=9)
    sends = [_msg(), forged_exit, seal(bytes(32), forged_exit), seal(KEY, _msg(seq=2)),
             seal(KEY, _msg(seq=2)), seal(KEY, _msg(seq=1)), seal(KEY, _msg(seq=3, sid="other")),
             seal(KEY, _msg(seq=1, attempt=1)), seal(KEY, b"{}")]
    for d in sends:
        s.sendto(d, addr)
    got = _drain_until(srv, len(sends))
    assert [(m["sid"], m["seq"], m["attempt"]) for m in got] == [("s1", 2, 0), ("other", 3, 0), ("s1", 1, 1)]
    assert dict(srv.rejected_by) == {"no_mac": 2, "bad_mac": 1, "replay": 2, "malformed": 1, "too_large": 0}
    assert srv.rejected == 6
    s.close()
    srv.close()


def test_rejection_report_is_rate_limited() -> None:
    srv = TelemetryServer(KEY)
    assert srv.rejection_report(0.0) is None
    srv.rejected_by["bad_mac"] += 3
    srv.rejected += 3
    assert srv.rejection_report(100.0)["reasons"] == {"bad_mac": 3}
    srv.rejected_by["replay"] += 1
    assert srv.rejection_report(100.0 + REPORT_EVERY_S / 2) is None  # too soon
    assert srv.rejection_report(100.0 + REPORT_EVERY_S)["reasons"] == {"replay": 1}
    assert srv.rejection_report(1000.0) is None  # nothing new
    srv.rejected_by["no_mac"] += 1
    assert srv.rejection_report(1000.5, force=True)["reasons"] == {"no_mac": 1}
    srv.close()


def test_heartbeat_thread_and_main_thread_share_one_sequence() -> None:
    """Two threads sending through one Telemetry: every datagram accepted, none taken for a replay."""
    srv = TelemetryServer(KEY)
    tel = Telemetry(srv.address, 3, "node1", 0, key=KEY)
    per_thread = 400
    received: list[dict] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set() or len(received) + srv.rejected < 2 * per_thread:
            received.extend(srv.drain())
            if len(received) + srv.rejected >= 2 * per_thread:
                break
            os.sched_yield()

    reader = threading.Thread(target=drain)
    reader.start()
    senders = [threading.Thread(target=lambda: [tel.send("hb", step=i) for i in range(per_thread)])
               for _ in range(2)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    done.set()
    reader.join(timeout=30)
    tel.close()
    srv.close()
    assert srv.rejected == 0
    assert sorted(m["seq"] for m in received) == list(range(1, 2 * per_thread + 1))


def test_sender_without_key_sends_nothing(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_TELEMETRY_KEY_FILE", raising=False)
    monkeypatch.delenv("ORCH_RUN_DIR", raising=False)
    srv = TelemetryServer(KEY)
    tel = Telemetry(srv.address, 0, "node0", 0)
    tel.send("hb")
    tel.close()
    assert "no key" in capsys.readouterr().err
    assert srv.drain() == [] and srv.rejected == 0
    srv.close()


def test_exporter_labels_rejections_by_reason() -> None:
    snap = RunSnapshot(name="r", telemetry_rejected=5, telemetry_rejected_by={"bad_mac": 4, "replay": 1})
    reg = CollectorRegistry()
    reg.register(SnapshotCollector(lambda: snap))
    get = reg.get_sample_value
    assert get("orchestrator_telemetry_rejected_total", {"run": "r"}) == 5
    assert get("orchestrator_telemetry_rejected_by_reason_total", {"run": "r", "reason": "bad_mac"}) == 4
    assert get("orchestrator_telemetry_rejected_by_reason_total", {"run": "r", "reason": "no_mac"}) == 0


def test_endpoint_defaults() -> None:
    assert endpoints("local", None, None, None) == ("127.0.0.1", "127.0.0.1")
    assert endpoints("local", None, None, "10.213.4.1") == ("10.213.4.1", "10.213.4.1")
    assert endpoints("slurm", "0.0.0.0", "login1.cluster", None) == ("0.0.0.0", "login1.cluster")
    bind, adv = endpoints("slurm", None, None, None)
    assert bind == adv and bind  # this host's cluster address (loopback only when it has none)
    assert endpoints("local", "0.0.0.0", None, "10.213.4.1") == ("0.0.0.0", "10.213.4.1")
