"""The memory tier: copies in the node agent's shared memory, replicated to a ring partner.

Unit tests: a torn, corrupted, stale (written after its epoch's fence) or other-layout copy is refused
with its reason and the next copy is used; replication only accepts frames under the run key. Local
cluster (2 nodes x 2 ranks): a rank crash, a hang and a node loss in one run each resume from memory
(own node, own node, partner node) with at most one step recomputed and the uninterrupted run's losses
at every step; with both copies gone (the node and its partner lost) the run resumes from storage,
whose checkpoints were written from the memory copies.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator import memtier_service
from trainer import memstore
from tests.conftest import RunResult, run_submit
from trainer.fence import EpochGuard, EpochState, FenceRecord
from trainer.memtier import MemoryTier, copy_into, load_payload


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def event(self, kind: str, **kw: Any) -> None:
        self.seen.append((kind, kw))


def header(step: int, epoch: int = 1, t: float = 100.0, payload: bytes = b"x" * 64,
           key: bytes = b"") -> memstore.CopyHeader:
    return memstore.sealed(key, memstore.CopyHeader(rank=0, step=step, epoch=epoch, t=t, world=4, layout="L",
                                                    size=len(payload)), payload)


def test_copy_refused_when_torn_corrupted_stale_or_other_layout(tmp_path: Path) -> None:
    payload = b"x" * 64
    fences = EpochState(2, (FenceRecord(2, 150.0, ()),))  # epoch 1 declared dead at t=150
    good = memstore.write_copy(tmp_path / "a", header(5, t=140.0), payload)
    assert good is not None and memstore.check(good, fences, 4, "L")[1] is None
    torn = memstore.write_copy(tmp_path / "b", header(5), payload)
    assert torn is not None
    torn.write_bytes(torn.read_bytes()[:-10])
    assert "torn" in str(memstore.check(torn, fences, 4, "L")[1])
    bad = memstore.write_copy(tmp_path / "c", header(5), payload)
    assert bad is not None
    raw = bytearray(bad.read_bytes())
    raw[0] ^= 0xFF  # a payload byte
    bad.write_bytes(bytes(raw))
    assert "checksum" in str(memstore.check(bad, fences, 4, "L")[1])
    forged = bytearray(good.read_bytes())
    at = forged.index(b'"step":5') + len(b'"step":')
    forged[at:at + 1] = b"6"  # a header field rewritten: the tag covers the header too
    (tmp_path / "a" / "forged.mem").write_bytes(bytes(forged))
    assert "checksum" in str(memstore.check(tmp_path / "a" / "forged.mem", fences, 4, "L")[1])
    assert "checksum" in str(memstore.check(good, fences, 4, "L", key=b"k" * 32)[1])  # not this run's key
    late = memstore.write_copy(tmp_path / "d", header(5, t=160.0), payload)  # after epoch 1's fence
    assert late is not None and "stale" in str(memstore.check(late, fences, 4, "L")[1])
    assert "layout" in str(memstore.check(good, fences, 2, "L")[1])
    assert memstore.write_copy(tmp_path / "e", header(5), payload, may_publish=lambda: False) is None
    assert list((tmp_path / "e").iterdir()) == []  # a fenced writer leaves nothing behind


def test_choose_skips_a_corrupted_newest_copy_and_reports_it(tmp_path: Path) -> None:
    tel = Events()
    mem = MemoryTier(tmp_path, 0, 1, "L", EpochGuard(None, 0), None, tel)
    state = {"model": {"w": torch.arange(4.0)}, "optim": {"step": torch.tensor(1.0), "lr": 0.1}}
    mem.snapshot(1, state, {"step": 1})
    state["model"]["w"] += 1
    mem.snapshot(2, state, {"step": 2})
    mem.wait()
    newest = memstore.list_copies(mem.dir)[0]
    raw = bytearray(newest.read_bytes())
    raw[3] ^= 0x01
    newest.write_bytes(bytes(raw))
    chosen = mem.choose()
    assert chosen is not None and chosen.step == 1
    assert [k for k, _ in tel.seen] == ["memory_copy_bad"] and "checksum" in tel.seen[0][1]["reason"]
    target = {"model": {"w": torch.zeros(4)}, "optim": {"step": torch.tensor(0.0), "lr": 0.0}}
    restored = copy_into(target, load_payload(chosen)["state"])
    assert torch.equal(target["model"]["w"], torch.arange(4.0)) and restored["optim"]["lr"] == 0.1


def test_rollback_starts_a_new_lineage_and_replicas_keep_the_newest_writes(tmp_path: Path) -> None:
    mem = MemoryTier(tmp_path, 0, 1, "L", EpochGuard(None, 3), None, Events())
    state = {"model": {"w": torch.zeros(2)}}
    mem.snapshot(9, state, {"step": 9})
    mem.wait()
    mem.discard_all()  # a rollback: the abandoned trajectory's copies go, later copies are another lineage
    mem.snapshot(4, state, {"step": 4})
    mem.wait()
    (new,) = memstore.list_copies(mem.dir)
    assert memstore.read_header(new).lineage == "3.1"
    replica = tmp_path / "replica"  # a partner still holding the old trajectory's higher steps
    for i, step in enumerate((9, 8, 4, 5)):  # written in this order
        path = memstore.write_copy(replica, header(step), b"x" * 64)
        assert path is not None
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    memstore.prune(replica)
    assert sorted(p.name for p in memstore.list_copies(replica)) == [memstore.copy_name(4), memstore.copy_name(5)]


def test_replicated_layout_reshards_from_any_old_ranks_copy(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(3.0)}}
    old = MemoryTier(tmp_path, 2, 4, "L", EpochGuard(None, 0), None, Events())  # world 4, rank 2's copy
    old.snapshot(7, state, {"step": 7})
    old.wait()
    same = MemoryTier(tmp_path, 1, 4, "L", EpochGuard(None, 0), None, Events(), replicated=True)
    assert same.choose() is None  # same world: never another rank's copy (restores stay exact)
    shrunk = MemoryTier(tmp_path, 1, 2, "L", EpochGuard(None, 0), None, Events(), replicated=True)
    chosen = shrunk.choose()  # world 2 after a shrink: rank 1 has no copy of its own, rank 2's will do
    assert chosen is not None and chosen.step == 7 and chosen.header.world == 4
    assert torch.equal(load_payload(chosen)["state"]["model"]["w"], torch.arange(3.0))
    strict = MemoryTier(tmp_path, 2, 2, "L", EpochGuard(None, 0), None, tel := Events())
    assert strict.choose() is None and "layout" in tel.seen[0][1]["reason"]  # sharded layouts: storage


def test_hybrid_layout_reshards_over_dp_only_from_the_same_tp_shard(tmp_path: Path) -> None:
    """dp2 x tp2 (dp replicas hold the same tp shard) shrinks to dp1 x tp2: new rank r loads a copy an old
    rank with r's tp coordinate wrote, whichever directory it sits in, never the other tp shard's."""
    def tp_of(rank: int, world: int) -> Any:
        return (0, rank % 2)  # (pp, tp), tp innermost as trainer.parallel.mesh places it

    for old_rank in (2, 3):  # the node that survived ran old ranks 2 and 3 (tp 0 and 1)
        old = MemoryTier(tmp_path, old_rank, 4, "L", EpochGuard(None, 0), None, Events())
        old.snapshot(9, {"w": torch.full((2,), float(old_rank))}, {"step": 9})
        old.wait()
    for new_rank, want in ((0, 2.0), (1, 3.0)):
        mem = MemoryTier(tmp_path, new_rank, 2, "L", EpochGuard(None, 0), None, Events(), replicated=True,
                         shard_key=tp_of)
        chosen = mem.choose()
        assert chosen is not None and chosen.header.rank == int(want), chosen
        assert torch.equal(load_payload(chosen)["state"]["w"], torch.full((2,), want))
    # an old copy of the other shard left in a new rank's own directory is passed over, not loaded or removed
    lone = tmp_path / "lone"
    old = MemoryTier(lone, 1, 4, "L", EpochGuard(None, 0), None, Events())  # tp 1, in what is now rank 1's dir
    old.snapshot(9, {"w": torch.ones(2)}, {"step": 9})
    old.wait()
    assert MemoryTier(lone, 1, 2, "L", EpochGuard(None, 0), None, Events(), replicated=True,
                      shard_key=lambda r, w: (0, r % 2 if w == 2 else 0)).choose() is None
    assert memstore.list_copies(memstore.rank_dir(lone, 1))  # still there for a rank it fits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_replication_only_under_the_run_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memstore, "BASE", tmp_path / "shm")
    monkeypatch.delenv(memstore.ENV_DIR, raising=False)  # NodeMemory sets it for its ranks
    port = _free_port()
    holder = memtier_service.NodeMemory("node1", tmp_path / "run", port, b"k" * 32)
    try:
        src = memstore.write_copy(tmp_path / "src", header(7), b"x" * 64)
        assert src is not None
        for key in (b"w" * 32, b"k" * 32):  # a stranger's push is refused, the run's is stored
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                memtier_service.send_frame(s, key, {"op": "put", "src": "node0", "rank": 2, "step": 7}, src)
                if key == b"k" * 32:
                    assert memtier_service.recv_frame(s, key)[0]["op"] == "ok"
                else:
                    assert s.recv(1) == b""  # closed without a reply
        stored = list((holder.base / "replica" / "node0" / "rank2").iterdir())
        assert [p.name for p in stored] == [memstore.copy_name(7)]
        spare = memtier_service.NodeMemory("node2", tmp_path / "run", None, b"k" * 32)
        assert spare.fetch(2, ("127.0.0.1", port))  # a spare pulls the copy of the rank it takes over
        assert memstore.list_copies(memstore.rank_dir(spare.base, 2))[0].read_bytes() == src.read_bytes()
        spare.close()
        # rank 2 then ran on node5 (steps 30, 31 pushed later): a second spare keeps those, not node0's
        # old step 7, whatever order the holder's directories list in (write times travel with copies)
        for step in (30, 31):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                newer = memstore.write_copy(tmp_path / "src", header(step), b"x" * 64)
                assert newer is not None
                memtier_service.send_frame(s, b"k" * 32, {"op": "put", "src": "node5", "rank": 2, "step": step},
                                           newer)
                memtier_service.recv_frame(s, b"k" * 32)
        old = holder.base / "replica" / "node0" / "rank2" / memstore.copy_name(7)
        os.utime(old, ns=(1, 1))
        spare = memtier_service.NodeMemory("node6", tmp_path / "run", None, b"k" * 32)
        assert spare.fetch(2, ("127.0.0.1", port))
        got = memstore.list_copies(memstore.rank_dir(spare.base, 2))
        assert [p.name for p in got] == [memstore.copy_name(31), memstore.copy_name(30)]
        held = holder.base / "replica" / "node5" / "rank2" / memstore.copy_name(31)
        assert got[0].stat().st_mtime_ns == held.stat().st_mtime_ns
        spare.close()
    finally:
        holder.close()


def test_fetch_from_a_frozen_source_gives_up_and_keeps_heartbeating(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that accepts (its kernel still does: a SIGSTOPped agent, a node not yet declared lost)
    but never answers: the fetch gives up after its idle limit, calling the agent's heartbeat throughout,
    so the spare that fetches is not declared lost along with the frozen node."""
    monkeypatch.setattr(memstore, "BASE", tmp_path / "shm")
    monkeypatch.delenv(memstore.ENV_DIR, raising=False)
    frozen = socket.create_server(("127.0.0.1", 0))  # listens, never accepts or replies
    beats: list[float] = []
    spare = memtier_service.NodeMemory("node2", tmp_path / "run", None, b"k" * 32)
    try:
        t0 = time.monotonic()
        assert not spare.fetch(2, frozen.getsockname()[:2], lambda: beats.append(time.monotonic()), idle_s=1.0)
        took = time.monotonic() - t0
        assert 1.0 <= took < 10.0, took
        gaps = [b - a for a, b in zip([t0, *beats], [*beats, time.monotonic()])]
        assert len(beats) >= 5 and max(gaps) < 1.0, gaps  # never silent for long
    finally:
        spare.close()
        frozen.close()


def test_plan_launch_fetches_moved_ranks_from_old_node_then_partner() -> None:
    addr = {n: (f"10.0.0.{i}", 9000) for i, n in enumerate(["node0", "node1", "node2"])}
    plan, owner, partner = memtier_service.plan_launch(["node0", "node1"], 2, {}, {}, addr)
    assert plan["node0"]["partner"] == addr["node1"] and plan["node1"]["partner"] == addr["node0"]
    del addr["node1"]  # node1 lost; node2 takes its place
    plan, owner, _ = memtier_service.plan_launch(["node0", "node2"], 2, owner, partner, addr)
    assert plan["node0"]["sources"] == {}  # ranks 0, 1 stay: their own copies
    assert plan["node2"]["sources"] == {"2": [addr["node0"]], "3": [addr["node0"]]}


def test_copies_are_kept_back_to_the_step_every_ring_node_replicated(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """node1's replicas lag (it pushes only every 4th step): both nodes learn, from the push frames and
    their acknowledgements, that step 4 is the newest replicated by the whole ring, so node0 keeps its
    own copies 4..7 (not just 6, 7), and node1's ranks share step 4 at node0. Bounded by MAX_KEEP."""
    monkeypatch.setattr(memstore, "BASE", tmp_path / "shm")
    monkeypatch.delenv(memstore.ENV_DIR, raising=False)
    monkeypatch.setenv(memtier_service.ENV_TEST_PUSH_EVERY, "node1:4")
    ports, key = (_free_port(), _free_port()), b"k" * 32
    nodes = [memtier_service.NodeMemory(f"node{i}", tmp_path / "run", ports[i], key) for i in (0, 1)]
    try:
        for i, mem in enumerate(nodes):
            for rank in (2 * i, 2 * i + 1):
                for step in range(1, 8):  # written before the attempt starts: no push mid-way
                    path = memstore.write_copy(memstore.rank_dir(mem.base, rank), header(step), b"x" * 64)
                    assert path is not None
                    os.utime(path, ns=(10**18 + step, 10**18 + step))
        for i, mem in enumerate(nodes):
            mem.before_launch({"attempt": 3, "ranks": [2 * i, 2 * i + 1],
                               "mem": {"partner": ["127.0.0.1", ports[1 - i]], "ring": ["node0", "node1"]}})
        deadline = time.monotonic() + 60
        while any(m.retain_from != 4 for m in nodes) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the pushers' progress, bounded by the deadline
        assert [m.retain_from for m in nodes] == [4, 4], [m.acked for m in nodes]
        assert nodes[0].acked["node0"][0] == 7 and nodes[1].acked["node1"][0] == 4
        own = memstore.rank_dir(nodes[0].base, 0)
        memstore.prune(own, memstore.read_retain(nodes[0].base))  # what the rank's writer does
        assert [memstore.step_of(p) for p in memstore.list_copies(own)] == [7, 6, 5, 4]
        for rank in (2, 3):  # node1's ranks: the same step at the partner
            held = nodes[0].base / "replica" / "node1" / f"rank{rank}"
            assert [memstore.step_of(p) for p in memstore.list_copies(held)] == [4]
        nodes[1].learn(2, {"node0": (1, 10**12)})  # another attempt's report is ignored
        assert nodes[1].acked["node0"][0] == 7
        memstore.prune(own, memstore.UNKNOWN)  # before every node reported: all, up to MAX_KEEP
        assert len(memstore.list_copies(own)) == 4
        for step in range(8, 12):
            memstore.write_copy(own, header(step), b"x" * 64)
        memstore.prune(own, 0)
        assert len(memstore.list_copies(own)) == memstore.MAX_KEEP
        memstore.prune(own, None)  # no replication: the newest two
        assert len(memstore.list_copies(own)) == memstore.KEEP
        # a rollback: the ranks discarded their copies and write steps 5, 6, 7 of a new trajectory while
        # the ring still reports the old one's step 10; those are kept (the old watermark is ignored)
        for p in memstore.list_copies(own):
            p.unlink()
        for step in (5, 6, 7):
            memstore.write_copy(own, header(step), b"x" * 64)
            memstore.prune(own, 10)
        assert [memstore.step_of(p) for p in memstore.list_copies(own)] == [7, 6, 5]
    finally:
        for mem in nodes:
            mem.close()


def test_a_new_agent_reclaims_the_memory_of_dead_agents_of_its_run(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGKILLed agent leaves its copies in /dev/shm; the next agent of the run on the host removes
    them, and only them: a live (or frozen) agent's, another host's, and an unjudgeable one stay."""
    monkeypatch.setattr(memstore, "BASE", tmp_path / "shm")
    monkeypatch.delenv(memstore.ENV_DIR, raising=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    me = memtier_service._whoami()
    owners = {"node1": {**me, "pid": dead.pid}, "node2": me,  # dead; alive (this test)
              "node3": {**me, "pid": dead.pid, "host": "elsewhere"}, "node4": None}  # another host; no owner
    for node, owner in owners.items():
        d = memstore.node_dir(tmp_path / "run", node)
        memstore.write_copy(memstore.rank_dir(d, 0), header(3), b"x" * 64)
        if owner is not None:
            (d / memtier_service.OWNER).write_text(json.dumps(owner))
    mem = memtier_service.NodeMemory("node0", tmp_path / "run", None, None)
    try:
        left = sorted(p.name for p in mem.base.parent.iterdir())
        assert left == ["node0", "node2", "node3", "node4"], left
    finally:
        mem.close()


# ---- on the local cluster --------------------------------------------------------------------------
def _assert_same_losses(r: RunResult, clean: RunResult) -> None:
    want, got = clean.losses(), r.losses()
    assert sorted(got) == sorted(want)
    for step in sorted(want):
        assert abs(want[step] - got[step]) < 1e-6, (step, want[step], got[step])


# Under load a slow step can read as a hang and add a relaunch of its own: each check follows the fault
# chaos injected (matched by the ground-truth marker) to the restore right after it.
SLACK = {"health": {"hang_timeout_s": 6.0}, "checkpoint": {"memory": {"enabled": True}}}


def loads_after_injections(r: RunResult) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(injected fault, the first restore after it) for every fault chaos injected."""
    out = []
    for f in r.events("fault"):
        if f.get("injected"):
            load = next((e for e in r.events("checkpoint_loaded") if e["seq"] > f["seq"]), None)
            assert load is not None, f"no restore after {f['kind']}"
            out.append((f, load))
    return out


def test_crash_hang_and_node_loss_resume_from_memory(tmp_path: Path, clean_run: RunResult,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # node1's replicas lag: it replicates only every 4th step (the test hook), so when it is lost after
    # step 47 its partner holds 44 while node0's ranks wrote 45..47. Lag-aware retention keeps node0's
    # copies back to 44, the newest step every rank has replicated: the node loss resumes from memory
    # there (with two copies kept per rank, as before, no step was common and it came from storage at 40).
    monkeypatch.setenv(memtier_service.ENV_TEST_PUSH_EVERY, "node1:4")
    chaos = [{"fault": "rank_crash", "step": 15, "rank": 3},
             {"fault": "hang", "step": 30, "rank": 2},
             {"fault": "node_failure", "step": 47, "node": 1}]
    r = run_submit(tmp_path, {"chaos": chaos, **SLACK})
    assert r.code == 0 and r.status["state"] == "COMPLETED", r.status.get("reason")
    pairs = loads_after_injections(r)
    assert [f["kind"] for f, _ in pairs] == ["rank_crash", "hang", "node_failure"], pairs
    for (fault, load), injected in zip(pairs, chaos):  # the fault struck before step F: F steps were done
        assert load["tier"] == "memory", (fault, load)
        if fault["kind"] == "node_failure":  # node1's newest replicated step, two or more steps back
            assert load["step"] % 4 == 0 and injected["step"] - 7 <= load["step"] <= injected["step"] - 2, load
        else:
            assert injected["step"] - 1 <= load["step"] <= injected["step"], (fault, load)
    # the ledger charges what was redone: from the step restored to the step the fault struck at, even
    # when the copy loaded was newer than the one the supervisor had heard of when it relaunched
    charged = [(f["kind"], f["step"], f["lost_steps"]) for f in r.status["faults"] if f.get("injected_t")]
    assert charged == [(f["kind"], f["step"], f["step"] - load["step"]) for f, load in pairs], (charged, pairs)
    assert r.events("launch")[-1]["nodes"] == ["node0", "node2"]  # node1's ranks restored on the spare
    _assert_same_losses(r, clean_run)
    assert not memstore.node_dir(r.run_dir, "node0").exists()  # the agents removed their memory


def test_node_and_partner_lost_resume_from_storage(tmp_path: Path, clean_run: RunResult) -> None:
    chaos = [{"fault": "node_failure", "step": 25, "node": 0}, {"fault": "node_failure", "step": 25, "node": 1}]
    # async_save: the storage checkpoints are written from the memory tier's copies (no second copy).
    # No hang is injected here, so the timeouts can be generous: at load 33 a node's ranks went 3 s
    # without a heartbeat (half the 6 s hang timeout) and were lost in error. The killed agents are
    # found from their exit, not from silence, so this checks the same thing.
    r = run_submit(tmp_path, {"chaos": chaos, "cluster": {"spare_nodes": 2}, **SLACK,
                              "health": {"hang_timeout_s": 30.0, "agent_timeout_s": 20.0},
                              "checkpoint": {"async_save": True, "memory": {"enabled": True}}})
    assert r.code == 0 and r.status["state"] == "COMPLETED", r.status.get("reason")
    (fault, load), = loads_after_injections(r)[:1]
    assert fault["kind"] == "node_failure" and load["tier"] == "storage", (fault, load)
    assert 10 <= load["step"] <= 20, load  # the newest committed checkpoint (the async one may lag)
    _assert_same_losses(r, clean_run)
