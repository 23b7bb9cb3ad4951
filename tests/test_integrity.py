"""Nothing lost: the journal survives torn writes, checkpoints are complete or ignored (checksums,
fallback to the previous good one, retention keeps the last good), telemetry garbage is counted and
dropped, and a second supervisor on the same run directory refuses."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from orchestrator import rundir
from spec.config import RunConfig
from orchestrator.journal import Journal, read_journal
from trainer.telemetry_auth import seal
from orchestrator.telemetry_server import MAX_MESSAGE, TelemetryServer, validate
from trainer import checkpoint as ckpt


def test_journal_skips_torn_tail_and_keeps_appending(tmp_path: Path) -> None:
    with Journal(tmp_path) as j:
        j.append("a", x=1)
        j.append("b", x=2)
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"seq":2,"event":"tor')  # a crash in the middle of a write
    assert [e["event"] for e in read_journal(tmp_path)] == ["a", "b"]
    with Journal(tmp_path) as j:
        j.append("c")
    assert [e["event"] for e in read_journal(tmp_path)] == ["a", "b", "c"]


def _save(root: Path, step: int) -> Path:
    state = {"model": {"w": torch.full((64,), float(step))}}
    ckpt.save(root, step, state, {"step": step}, rank=0)
    return ckpt.step_dir(root, step)


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_damaged_checkpoint_is_marked_bad_and_previous_used(tmp_path: Path, damage: str) -> None:
    _save(tmp_path, 10)
    newest = _save(tmp_path, 20)
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:10])
    elif damage == "corrupt":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    bad: list[str] = []
    ref = ckpt.choose_for_load(tmp_path, rank=0, on_bad=lambda r, why: bad.append(why))
    assert ref is not None and ref.step == 10
    assert bad and (newest / ckpt.BAD).exists()
    state = {"model": {"w": torch.zeros(64)}}
    assert ckpt.load(ref, state, rank=0)["step"] == 10 and float(state["model"]["w"][0]) == 10.0


def test_uncommitted_checkpoint_never_counts(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    partial = _save(tmp_path, 20)
    (partial / ckpt.COMMITTED).unlink()  # a rank died before the commit marker
    assert [r.step for r in ckpt.committed(tmp_path)] == [10]


def test_disk_full_during_save_keeps_last_good(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    with pytest.raises(ckpt.CheckpointFailed) as info:
        ckpt.save(tmp_path, 20, {"model": {"w": torch.ones(4)}}, {"step": 20}, rank=0, fault="disk_full")
    assert info.value.kind == "disk_full"
    assert [r.step for r in ckpt.committed(tmp_path)] == [10]
    assert ckpt.verify(ckpt.step_dir(tmp_path, 10)) is None


def test_retention_keeps_last_good_even_when_newer_are_bad(tmp_path: Path) -> None:
    for s in (10, 20, 30, 40):
        _save(tmp_path, s)
    for s in (30, 40):
        ckpt.mark_bad(ckpt.step_dir(tmp_path, s), "test")
    ckpt.apply_retention(tmp_path, keep=1)
    assert [r.step for r in ckpt.committed(tmp_path)] == [20]


def test_telemetry_rejects_and_counts_garbage() -> None:
    key = bytes(32)
    srv = TelemetryServer(key)
    host, port = srv.address.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    good = {"type": "hb", "rank": 0, "attempt": 0, "t": 1.0, "sid": "s", "seq": 1}
    for payload in [b"not json", b"[1,2]", json.dumps({"type": "hb"}).encode(), b"{" * 5000,
                    json.dumps({**good, "rank": "0"}).encode(), json.dumps({**good, "type": "rm -rf"}).encode(),
                    json.dumps({**good, "pad": "x" * (MAX_MESSAGE + 10)}).encode()[:MAX_MESSAGE + 100],
                    json.dumps(good).encode()]:
        s.sendto(seal(key, payload), (host, int(port)))  # sealed: these test the parser behind the MAC
    msgs: list[dict] = []
    for _ in range(200):
        msgs += srv.drain()
        if len(msgs) + srv.rejected >= 8:
            break
        os.sched_yield()
    assert msgs == [good] and srv.rejected == 7
    assert validate(json.dumps({**good, "t": float("inf")}).encode()) is None
    srv.close()


def test_second_supervisor_refuses(tmp_path: Path) -> None:
    run_dir = rundir.create(tmp_path / "r", RunConfig())
    first = rundir.lock(run_dir)
    with pytest.raises(rundir.RunDirLocked, match=f"pid {os.getpid()}"):
        rundir.lock(run_dir)
    first.close()
    rundir.lock(run_dir).close()


def test_run_dir_is_never_overwritten(tmp_path: Path) -> None:
    rundir.create(tmp_path / "r", RunConfig())
    from orchestrator.config_load import ConfigError
    with pytest.raises(ConfigError, match="resume"):
        rundir.create(tmp_path / "r", RunConfig())
