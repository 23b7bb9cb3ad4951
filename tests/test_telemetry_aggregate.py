"""The node agent's telemetry relay: one authenticated aggregate per node, per-rank liveness kept.

Real sockets and the real parts: ranks' ``Telemetry`` senders → ``NodeRelay`` on loopback → the
supervisor's ``TelemetryServer`` → ``RunEvents`` over an ``AttemptWatch`` → the liveness rule. Both ends
run on clocks the test passes (the relay's ``clock``, the supervisor's ``now``), so a 12-second silence
takes no time; datagrams are waited for with ``select``, never a sleep.
"""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path
from typing import Any

import pytest

from health.detectors.comm_slowdown import CommSlowdownDetector
from health.detectors.hang import LivenessLimits, assess_stall
from health.detectors.straggler import StragglerDetector
from orchestrator.attempt import AttemptWatch
from orchestrator.launcher.base import LaunchSpec
from orchestrator.launcher.telemetry_relay import NodeRelay
from orchestrator.run_events import RunEvents
from orchestrator.telemetry_columns import pack_entries, pack_rows
from orchestrator.telemetry_server import TelemetryServer, unpack_aggregate
from spec.config import RunConfig
from trainer.telemetry import Telemetry
from trainer.telemetry_auth import seal

KEY = bytes(range(32))
LIMITS = LivenessLimits(hang_timeout_s=10.0, startup_timeout_s=60.0, heartbeat_interval_s=0.5)
T0 = 1000.0  # the supervisor's clock at the start


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _wait(sock: Any) -> None:
    assert select.select([sock], [], [], 10.0)[0], "no datagram within 10 s"


def _pump(relay: NodeRelay, datagrams: int) -> None:
    """Let the relay take ``datagrams`` more datagrams from its ranks."""
    want = relay.taken + datagrams
    while relay.taken < want:
        _wait(relay)
        relay.pump()


def _drain(srv: TelemetryServer, datagrams: int) -> list[dict[str, Any]]:
    """What the supervisor accepts from its next ``datagrams`` datagrams (accepted or dropped)."""
    out: list[dict[str, Any]] = []
    want = srv.received + srv.rejected + datagrams
    while srv.received + srv.rejected < want:
        _wait(srv)
        out += srv.drain()
    return out


@pytest.fixture()
def world(tmp_path: Path) -> Any:
    srv = TelemetryServer(KEY)
    clock = Clock()
    relay = NodeRelay(KEY, srv.address, "n0", 0, [0, 1], 0.5, clock=clock)
    ranks = [Telemetry(relay.address, r, "n0", 0, key=KEY) for r in (0, 1)]
    spec = LaunchSpec(0, ["n0"], 2, tmp_path, srv.address, tmp_path)
    watch = AttemptWatch(spec, T0)
    events = RunEvents(tmp_path / "metrics.jsonl", RunConfig(), StragglerDetector(window=20, factor=1.5, min_steps=8),
                       CommSlowdownDetector(), lambda *a: None)
    yield srv, clock, relay, ranks, watch, events
    for t in ranks:
        t.close()
    relay.close()
    srv.close()


def _step(tel: Telemetry, step: int) -> None:
    tel.send("step", step=step, loss=2.5, step_time=0.1, compute_time=0.1)


def test_stopped_rank_behind_a_live_agent_is_a_hang(world: Any) -> None:
    srv, clock, relay, (r0, r1), watch, events = world
    for tel in (r0, r1):
        tel.send("hb", step=0, pid=100 + tel.rank, phase="step")
        _step(tel, 0)
    _pump(relay, 4)  # both ranks' rows pending: sent at once, with both ranks' heartbeat ages
    for m in _drain(srv, 1):
        events.on_message(m, T0, watch)
    assert watch.last_hb == {0: T0, 1: T0} and watch.last_progress_max == T0
    assert relay.sent == 1 and srv.received == 1  # one datagram for both ranks' step rows

    # rank 1 stops (SIGSTOP: no heartbeat, no step); rank 0 keeps heartbeating, stuck in the collective
    for k in range(1, 25):
        clock.t = 0.5 * k
        r0.send("hb", step=1, pid=100, phase="step")
        _pump(relay, 1)  # flushes when its interval is due
        now = T0 + clock.t + 0.01  # received a little later, on the supervisor's clock
        (agg,) = _drain(srv, 1)
        assert agg["type"] == "hbs"
        events.on_message(agg, now, watch)
    assert watch.pids == {0: 100, 1: 101}  # from the heartbeats, through the aggregates
    assert watch.last_hb[0] == pytest.approx(now, abs=0.02)
    assert watch.last_hb[1] == pytest.approx(now - 12.0, abs=0.02)  # when the agent last heard it
    (finding,) = assess_stall(now, watch.last_progress_max, watch.last_hb, watch.rank_node, watch.exited_ok,
                              LIMITS, started=True, busy=False)
    assert finding.kind == "hang" and "1 ranks still heartbeating" in finding.detail, finding
    assert watch.silent_ranks(now, LIMITS.hang_timeout_s) == [1]
    # before the hang timeout, nothing
    assert not assess_stall(T0 + 9.9, watch.last_progress_max, watch.last_hb, watch.rank_node, watch.exited_ok,
                            LIMITS, started=True, busy=False)


def test_forged_and_replayed_aggregates_are_dropped_and_counted(world: Any) -> None:
    srv, clock, relay, (r0, r1), watch, events = world
    tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # stands where the supervisor is, to keep the bytes
    tap.bind(("127.0.0.1", 0))
    relay.target = tap.getsockname()
    for tel in (r0, r1):
        _step(tel, 0)
    _pump(relay, 2)
    _wait(tap)
    genuine = tap.recv(65536)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send.sendto(genuine, srv.sock.getsockname())
    (agg,) = _drain(srv, 1)
    assert agg["rows"][0]["rank"] == 0 and agg["cols"].tolist() == [(1, 0, 0.1)]  # rank 0's whole, the other's packed

    # replayed whole: the aggregate's own sequence; forged: signed with another key
    forged = genuine.replace(b'"rows":', b'"rowz":')
    assert forged != genuine
    send.sendto(genuine, srv.sock.getsockname())
    send.sendto(seal(bytes(32), genuine[35:]), srv.sock.getsockname())
    send.sendto(forged, srv.sock.getsockname())  # tampered after sealing
    assert _drain(srv, 3) == []
    assert srv.rejected_by["replay"] == 1 and srv.rejected_by["bad_mac"] == 2

    # a key holder's aggregate with a malformed row: that row is dropped and counted, the rest is used
    payload = json.loads(genuine[35:])
    payload.update(sid="q" + payload["sid"], cols=pack_rows([(1, 0, 0.1), (1, -3, 0.1), (2, 0, float("inf"))]))
    send.sendto(seal(KEY, json.dumps(payload).encode()), srv.sock.getsockname())
    (agg,) = _drain(srv, 1)
    assert [r["rank"] for r in agg["rows"]] == [0] and agg["cols"].tolist() == [(1, 0, 0.1)]
    assert srv.rejected_by["malformed"] == 2
    payload.update(seq=payload["seq"] + 1, cols=payload["cols"][:-3])  # a field that does not decode: all of it
    send.sendto(seal(KEY, json.dumps(payload).encode()), srv.sock.getsockname())
    (agg,) = _drain(srv, 1)
    assert len(agg["cols"]) == 0 and len(agg["rows"]) == 1 and srv.rejected_by["malformed"] == 3

    # a forged heartbeat on the node's loopback (to keep a stopped rank alive) is dropped by the relay,
    # and the relay's count reaches the supervisor's
    fake = b'{"type":"hb","rank":1,"node":"n0","attempt":0,"t":1.0,"sid":"x","seq":1,"step":0,"pid":1}'
    send.sendto(seal(bytes(32), fake), ("127.0.0.1", int(relay.address.rpartition(":")[2])))
    send.sendto(fake, ("127.0.0.1", int(relay.address.rpartition(":")[2])))
    _pump(relay, 2)
    assert relay.rejected == {"bad_mac": 1, "no_mac": 1}
    relay.target = srv.sock.getsockname()
    clock.t = 5.0
    relay.pump()
    (agg,) = _drain(srv, 1)
    assert srv.rejected_by["bad_mac"] == 3 and srv.rejected_by["no_mac"] == 1 and srv.rejected_by["malformed"] == 3
    assert dict(zip(agg["ranks"].rank, agg["ranks"].age)) == {0: 5.0, 1: 5.0}  # the forged heartbeat refreshed nothing
    tap.close()
    send.close()


def test_a_fenced_epochs_aggregate_is_rejected_row_by_row(tmp_path: Path) -> None:
    """An aggregate of an older attempt changes nothing, and each step row in it is journaled as a
    rejected step (the fencing audit counts a fenced epoch's applied steps through those lines)."""
    watch = AttemptWatch(LaunchSpec(1, ["n0"], 2, tmp_path, "127.0.0.1:9", tmp_path), T0)
    events = RunEvents(tmp_path / "metrics.jsonl", RunConfig(), StragglerDetector(window=20, factor=1.5, min_steps=8),
                       CommSlowdownDetector(), lambda *a: None)
    stale = {"type": "hbs", "rank": 0, "node": "n0", "attempt": 0, "t": 1.0, "ranks": pack_entries([[0, 0.1, 7, 5, "step"]]),
             "rows": [{"type": "step", "rank": 0, "attempt": 0, "t": 1.0, "step": 7}], "cols": pack_rows([(1, 7, 0.2)])}
    unpack_aggregate(stale)
    facts = events.on_message(stale, T0, watch)
    lines = [f.fields for f in facts if getattr(f, "event", None) == "stale_epoch_rejected"]
    assert [(x["what"], x["rank"], x["step"]) for x in lines] == [("hbs", 0, None), ("step", 0, 7), ("step", 1, 7)]
    assert events.stale_rejected == 3 and watch.last_hb == {} and not watch.agg.pending


def test_a_step_whose_other_ranks_died_still_gets_its_metrics_line(tmp_path: Path) -> None:
    """A node died with its ranks' rows for the last step still in its agent's relay: rank 0 applied the
    step, so when the attempt ends its metrics line is written (once), and nothing else is invented.
    (Seen in CI: after a node loss and a memory-tier resume past that step, step 24 had no line.)"""
    import json

    watch = AttemptWatch(LaunchSpec(1, ["n0", "n1"], 1, tmp_path, "127.0.0.1:9", tmp_path), T0)
    events = RunEvents(tmp_path / "metrics.jsonl", RunConfig(), StragglerDetector(window=20, factor=1.5, min_steps=8),
                       CommSlowdownDetector(), lambda *a: None)
    for step in (23, 24):
        events.on_message({"type": "step", "rank": 0, "attempt": 1, "t": 1.0, "step": step, "loss": 2.0 + step,
                           "step_time": 0.1, "ckpt_wait_s": 0.01 * step}, T0, watch)
    events.on_message({"type": "step", "rank": 1, "attempt": 1, "t": 1.0, "step": 23, "step_time": 0.1}, T0, watch)
    lines = lambda: [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [x["step"] for x in lines()] == [23]
    events.on_message({"type": "step", "rank": 1, "attempt": 1, "t": 1.0, "step": 25, "step_time": 0.1}, T0, watch)
    events.drain(watch)  # the attempt ended: step 24 had rank 0's row, step 25 only rank 1's
    assert [(x["step"], x["loss"], x["ckpt_wait_s"]) for x in lines()] == [(23, 25.0, 0.23), (24, 26.0, 0.24)]
    events.drain(watch)
    assert len(lines()) == 2 and not watch.agg.pending


def test_packed_entries_carry_phase_and_pid(tmp_path: Path) -> None:
    """A rank busy checkpointing behind its agent is busy at the supervisor (the start-up budget, not the
    hang timeout, applies), and back in "step" it is not, with that as progress; an unknown pid is no pid."""
    import json

    from orchestrator.launcher.telemetry_relay import aggregate_payload

    watch = AttemptWatch(LaunchSpec(0, ["n0"], 2, tmp_path, "127.0.0.1:9", tmp_path), T0)
    events = RunEvents(tmp_path / "metrics.jsonl", RunConfig(), StragglerDetector(window=20, factor=1.5, min_steps=8),
                       CommSlowdownDetector(), lambda *a: None)

    def agg(seq: int, entries: list[list[Any]]) -> dict[str, Any]:
        msg = json.loads(aggregate_payload("n0", 0, 0, "s", seq, entries, []))
        assert unpack_aggregate(msg) == ({}, {})
        return msg

    events.on_message(agg(1, [[0, 0.5, 3, 100, "step"], [1, 0.25, 3, None, "checkpoint"]]), T0, watch)
    assert watch.busy == {1: "checkpoint"} and watch.pids == {0: 100}
    assert watch.last_hb == {0: T0 - 0.5, 1: T0 - 0.25} and 1 not in watch.last_progress
    events.on_message(agg(2, [[0, 0.0, 4, 100, "step"], [1, 0.0, 4, 101, "step"]]), T0 + 1, watch)
    assert watch.busy == {} and watch.pids == {0: 100, 1: 101} and watch.last_progress[1] == T0 + 1


def test_per_node_maxima_in_one_pass_match_the_loop() -> None:
    """The metrics line's node_step_time from the rank → node arrays equals the per-rank loop, a rank of
    no known node included (as "?")."""
    from orchestrator.step_stats import NodeIndex, StepRow

    rank_node = {r: f"n{r // 4}" for r in range(64)}
    row = StepRow(3, 0, {}, {r: 0.1 + 0.013 * ((r * 7) % 11) for r in [*range(0, 64, 3), 70]})
    fast = row.node_times(rank_node, NodeIndex(rank_node))
    assert fast == row.node_times(rank_node) and fast["?"] == row.compute[70] and len(fast) == 17
