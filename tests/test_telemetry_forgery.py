"""Forged and replayed telemetry during a real local run: dropped, counted, never acted on.

Another user on the cluster network can reach the supervisor's port. Here a "forger" thread sends what
would hurt most if it were believed: a rank exit with Xid 79 (would exclude node1), NaN skip votes from
every rank (would record NaN faults and skipped batches) and a rollback report; unsigned, signed with
the wrong key, and signed with the right key but an old sequence number (a replay). The run must end
exactly as a clean run does, with every datagram counted by reason in status.json and the journal.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from trainer.telemetry_auth import key_path, seal
from tests.conftest import run_submit

FORGED_ROUNDS = 5


def _wait_launch(run_dir: Path, deadline_s: float = 240.0) -> dict | None:
    """The first launch record of the journal (the run's telemetry address), polled with a deadline."""
    end = time.monotonic() + deadline_s
    journal = run_dir / "journal.jsonl"
    while time.monotonic() < end:
        if journal.exists():
            for line in journal.read_text().splitlines():
                rec = json.loads(line)
                if rec["event"] == "launch":
                    return rec
        time.sleep(0.05)
    return None


def _harmful(attempt: int, t: float) -> list[dict]:
    xid = "RuntimeError: CUDA error: an illegal memory access was encountered (Xid 79)\n"
    out = [{"type": "rank_exit", "rank": 2, "node": "node1", "attempt": attempt, "t": t, "code": 1,
            "signal": None, "stderr_tail": xid, "stopping": False},
           {"type": "event", "kind": "rollback", "rank": 0, "node": "node0", "attempt": attempt, "t": t,
            "from_step": 5, "to_step": 0, "skipped": 3}]
    out += [{"type": "event", "kind": "skip_step", "rank": r, "node": f"node{r // 2}", "attempt": attempt,
             "t": t, "step": 3, "rule": "nonfinite_loss", "local_bad": r == 1, "detail": "loss=nan"}
            for r in range(4)]
    return out


def forge(run_dir: Path, sent: dict[str, int]) -> None:
    """Send the harmful messages unsigned, with a wrong key and as replays (old sequence numbers)."""
    launch = _wait_launch(run_dir)
    if launch is None:
        return
    host, _, port = str(launch["telemetry"]).rpartition(":")
    addr, attempt = (host, int(port)), int(launch["attempt"])
    key = key_path(run_dir).read_bytes()  # the test owns the run dir; another user could not read it
    wrong = bytes(32)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(FORGED_ROUNDS):
        for j, msg in enumerate(_harmful(attempt, time.time())):
            sid = f"forger{j}"
            body = json.dumps({**msg, "sid": sid, "seq": 1000 + i}).encode()
            s.sendto(body, addr)
            s.sendto(seal(wrong, body), addr)
            sent["no_mac"] += 1
            sent["bad_mac"] += 1
            if i == 0:  # a harmless authentic heartbeat with a high sequence, then "old" harmful ones
                hb = {"type": "hb", "rank": msg["rank"], "node": msg["node"], "attempt": attempt,
                      "t": time.time(), "sid": sid, "seq": 10_000}
                s.sendto(seal(key, json.dumps(hb).encode()), addr)
            s.sendto(seal(key, body), addr)  # seq 1000+i < 10000: a replay
            sent["replay"] += 1
        time.sleep(0.2)
    s.close()


def test_forged_and_replayed_datagrams_change_nothing(tmp_path: Path) -> None:
    sent = {"no_mac": 0, "bad_mac": 0, "replay": 0}
    forger = threading.Thread(target=forge, args=(tmp_path / "run", sent), daemon=True)
    forger.start()
    res = run_submit(tmp_path, {"train": {"steps": 30}})
    forger.join(timeout=60)
    assert res.code == 0, res.status["reason"]
    assert sum(sent.values()) == FORGED_ROUNDS * 6 * 3
    assert not res.events("node_excluded")
    assert res.events("fault") == [] and res.status["batches_skipped"] == 0
    assert res.status["actions"] == {} and res.status["steps_lost_to_rollbacks"] == 0
    by = res.status["telemetry_rejected_by"]
    for reason, n in sent.items():
        assert by[reason] == n, (reason, by)
    reports = res.events("telemetry_rejected")
    assert reports and sum(sum(r["reasons"].values()) for r in reports) == res.status["telemetry_rejected"]
    # rate-limited, not one line per datagram: the first at once, at most one per 10 s, the rest at the end
    assert len(reports) <= 2 + res.status["wall_s"] / 10, reports
