"""What the supervisor costs: (a) training step time with and without it; (b) telemetry ingest at scale.

(a) runs the same fault-free config under ``orchestrator submit`` and directly under torchrun (the
trainer needs nothing else), and compares the median per-step time (rank 0's ``step_time``). The two
runs are interleaved ``--repeats`` times: other jobs share these cores, so only ratios within one
invocation mean anything.

(b) sender processes play N simulated ranks (real UDP, paced in 20 ms slices, sealed with the run key).
The receiver (this process) does what the supervisor does with
them, in one of three modes:
* ``components``: TelemetryServer.drain → StepAggregator.add → StragglerDetector.observe_array per
  completed step, receive-time updates and the liveness rule (hang.assess_stall) every 50 ms tick;
* ``real``: the supervisor's own RunEvents.on_message over an AttemptWatch (a stand-in Supervisor object
  supplies the meter, snapshot, detector and a no-op journal), plus the per-tick calls watch_attempt and
  publish make (hang.assess_stall over the watch, heartbeat_age_max).
* ``full``: a real Supervisor (its authenticated socket, RunEvents → facts → apply, check_liveness and publish
  every tick with status.json once a second, the fsynced journal) and its Prometheus endpoint scraped once a
  second; only the launcher is idle.
* ``full-agg``: the same real Supervisor, with the senders playing node agents instead of ranks: what each
  node's telemetry relay (orchestrator.launcher.telemetry_relay) sends for its 8 ranks: one aggregate per
  step with the node's step rows, and one per heartbeat interval with every rank's last-heard age when
  no row told the supervisor of them within the interval (two datagrams per node per second by default).
By default each rank sends a heartbeat every 0.5 s (the default heartbeat interval) and a step row every
second (``--hb-hz``, ``--step-hz``).
It reports messages/s received, drops, CPU seconds per message (time.process_time of the receiver) and
the share of one core used. ``--profile`` prints the top of a cProfile of the receiver.

Usage: .venv/bin/python benchmarks/bench_supervisor.py ingest [--ranks 1024,4096,16384] [--mode full,full-agg]
       [--repeats 3]
       .venv/bin/python benchmarks/bench_supervisor.py overhead [--repeats 2]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import multiprocessing as mp
import pstats
import select
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, median, save_json, table  # noqa: E402
from health.detectors.hang import LivenessLimits, assess_stall  # noqa: E402
from health.detectors.comm_slowdown import CommSlowdownDetector  # noqa: E402
from health.detectors.straggler import StragglerDetector  # noqa: E402
from orchestrator.step_stats import StepAggregator  # noqa: E402
from trainer.telemetry_auth import create_or_load_key, seal  # noqa: E402
from orchestrator.telemetry_server import TelemetryServer  # noqa: E402
from orchestrator.launcher.base import Launcher, LaunchSpec  # noqa: E402

RANKS_PER_NODE = 8
TICK_S = 0.05  # the supervisor's select() timeout
STEP_T = (b'{"type":"step","rank":%d,"node":"n%d","attempt":0,"t":%.3f,"step":%d,"loss":2.5,'
          b'"grad_norm":1.0,"lr":0.001,"step_time":%.4f,"compute_time":%.4f,"sync_time":0.01,'
          b'"tokens":8192,"skipped":false,"rule":null,"sid":"b%d","seq":%d}')
HB_T = b'{"type":"hb","rank":%d,"node":"n%d","attempt":0,"t":%.3f,"step":%d,"pid":%d,"sid":"b%d","seq":%d}'
LIMITS = LivenessLimits(hang_timeout_s=10.0, startup_timeout_s=60.0, heartbeat_interval_s=1.0)
KEY = bytes(range(32))  # the benchmark's run key: senders seal every datagram as ranks do


# ---- (b) sender -------------------------------------------------------------------------------------------
def paced(t0: float, seconds: float, slices: int) -> Iterator[tuple[int, float]]:
    """Every 1/``slices`` of a second from ``t0`` for ``seconds``: (slice index, now), sleeping until due,
    so a sender offers its load evenly instead of in bursts."""
    for s in range(int(seconds)):
        for k in range(slices):
            delay = t0 + s + k / slices - time.time()
            if delay > 0:
                time.sleep(delay)
            yield k, time.time()


def sender(addr: tuple[str, int], ranks: range, seconds: float, counter: Any, t0: float,
           key: bytes = KEY, hb_hz: int = 1, step_hz: int = 1) -> None:
    """Each second: every rank sends ``step_hz`` step rows and ``hb_hz`` heartbeats, spread over 50 slices
    of 20 ms (a rank's messages evenly apart). Writes (datagrams sent, seconds it took) into ``counter`` so
    a sender that fell behind shows."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    rng = np.random.default_rng(ranks.start)
    jitter = (0.5 + 0.02 * rng.standard_normal(len(ranks))).tolist()
    sent, slices, seq, step = 0, 50, [0] * len(ranks), [0] * len(ranks)
    per = -(-len(ranks) // slices)
    hb_at = {(k * slices) // hb_hz for k in range(hb_hz)}  # slice offsets of a rank's heartbeats
    step_at = {(k * slices) // step_hz for k in range(step_hz)}
    for k, now in paced(t0, seconds, slices):
        for offset in sorted(hb_at | step_at):
            c = (k - offset) % slices  # the chunk of ranks whose message is due in this slice
            for i in range(c * per, min(len(ranks), (c + 1) * per)):
                r, node = ranks[i], ranks[i] // RANKS_PER_NODE
                if offset in step_at:
                    seq[i] += 1
                    sock.sendto(seal(key, STEP_T % (r, node, now, step[i], jitter[i], jitter[i], r, seq[i])),
                                addr)
                    step[i] += 1
                    sent += 1
                if offset in hb_at:
                    seq[i] += 1
                    sock.sendto(seal(key, HB_T % (r, node, now, step[i], 1000 + r, r, seq[i])), addr)
                    sent += 1
    counter[0], counter[1] = sent, time.time() - t0


def agent_sender(addr: tuple[str, int], nodes: range, seconds: float, counter: Any, t0: float,
                 key: bytes = KEY, hb_hz: int = 1, step_hz: int = 1) -> None:
    """Plays node agents (``--mode full-agg``): what each node's relay sends for ``RANKS_PER_NODE`` ranks
    beating ``hb_hz`` times and stepping ``step_hz`` times a second: an aggregate every heartbeat
    interval (every rank's age) unless the node's rows went within the interval, and one when every rank of
    the node has a step row pending (the rows, no ages). The payload comes from the relay's own encoder."""
    from orchestrator.launcher.telemetry_relay import aggregate_payload
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sent, slices, seq, step = 0, 50, [0] * len(nodes), [0] * len(nodes)
    rank_seq, told = [0] * len(nodes), [0.0] * len(nodes)
    row_of = [json.loads(STEP_T % (r, 0, 0.0, 0, 0.5, 0.5, r, 0)) for r in range(RANKS_PER_NODE)]
    per = -(-len(nodes) // slices)
    hb_at = {(k * slices) // hb_hz for k in range(hb_hz)}
    step_at = {(k * slices) // step_hz + slices // (2 * hb_hz * step_hz) for k in range(step_hz)}
    for k, now in paced(t0, seconds, slices):
        for offset in sorted(hb_at | step_at):
            c = (k - offset) % slices
            for i in range(c * per, min(len(nodes), (c + 1) * per)):
                node = nodes[i]
                ranks = range(node * RANKS_PER_NODE, (node + 1) * RANKS_PER_NODE)
                rows: list[dict[str, Any]] = []
                if offset in step_at:
                    rank_seq[i] += 1
                    rows = [dict(row_of[r - ranks[0]], rank=r, node=f"n{node}", t=now, step=step[i], sid=f"b{r}",
                                 seq=rank_seq[i]) for r in ranks]
                    step[i] += 1
                entries: list[list[Any]] = []
                if rows:
                    told[i] = now
                elif now - told[i] >= 0.99 / hb_hz:  # the relay's rule: nothing told for an interval
                    entries = [[r, 0.25, step[i], 1000 + r, "step"] for r in ranks]
                    told[i] = now
                else:
                    continue  # the relay sends nothing: every rank's row went within the interval
                seq[i] += 1
                sock.sendto(seal(key, aggregate_payload(f"n{node}", 0, ranks[0], f"a{node}", seq[i], entries,
                                                        rows)), addr)
                sent += 1
    counter[0], counter[1] = sent, time.time() - t0


# ---- (b) receivers ----------------------------------------------------------------------------------------
class ComponentSink:
    """The detector pipeline as the brief names it, without the supervisor object around it."""

    def __init__(self, ranks: int) -> None:
        self.agg = StepAggregator(ranks, 0)
        self.last_hb: dict[int, float] = {}
        self.last_progress_t = time.time()
        self.det = StragglerDetector(window=20, factor=1.5, min_steps=8)
        self.nodes = {r: f"n{r // RANKS_PER_NODE}" for r in range(ranks)}
        self.ranks, self.rows = ranks, 0

    def on_message(self, m: dict[str, Any], now: float) -> None:
        r = m["rank"]
        if m["type"] == "hb":
            self.last_hb[r] = now
            return
        if m["type"] == "step":
            self.last_hb[r] = self.last_progress_t = now
            for row in self.agg.add(m):
                times = np.full(self.ranks, np.nan)
                idx = np.fromiter(row.compute.keys(), dtype=np.int64, count=len(row.compute))
                times[idx] = np.fromiter(row.compute.values(), dtype=float, count=len(row.compute))
                self.det.observe_array(row.step, times, self.nodes)
                self.rows += 1

    def tick(self, now: float) -> None:
        assess_stall(now, self.last_progress_t, self.last_hb, self.nodes, set(), LIMITS, started=True, busy=False)


class RealSink:
    """RunEvents.on_message, the supervisor's own handler, and Supervisor.apply of the facts it returns,
    over a stand-in Supervisor."""

    def __init__(self, ranks: int, run_dir: Path) -> None:
        from orchestrator.attempt import AttemptWatch
        from spec.config import RunConfig
        from orchestrator.goodput import GoodputMeter
        from orchestrator.launcher.base import LaunchSpec
        from orchestrator.run_events import RunEvents
        from orchestrator.snapshot import RunSnapshot
        from orchestrator.supervisor import Supervisor
        nodes = [f"n{i}" for i in range(-(-ranks // RANKS_PER_NODE))]
        spec = LaunchSpec(0, nodes, RANKS_PER_NODE, run_dir, "127.0.0.1:0", run_dir)
        self.sup = SimpleNamespace(
            run_dir=run_dir, watch=AttemptWatch(spec, time.time()), meter=GoodputMeter(time.time()),
            snap=RunSnapshot(), straggler=StragglerDetector(window=20, factor=1.5, min_steps=8),
            cfg=RunConfig(), recovery_started_t=None, journal=SimpleNamespace(append=lambda *a, **k: None),
            record_fault=lambda *a, **k: None, comm=CommSlowdownDetector(), on_comm_slowdown=lambda *a: None)
        self.sup._on_step_timed = lambda f, now: Supervisor._on_step_timed(self.sup, f, now)  # type: ignore[arg-type]
        self.apply = lambda facts, now: Supervisor.apply(self.sup, facts, now)  # type: ignore[arg-type]
        from orchestrator.auto_interval import AutoInterval
        self.sup.auto_interval = AutoInterval(self.sup)  # the real supervisor's interval tuner (fed per step)
        self.events = RunEvents(run_dir / "metrics.jsonl", self.sup.cfg, self.sup.straggler, self.sup.comm,
                                lambda *a: None)
        self.rows = 0

    def on_message(self, m: dict[str, Any], now: float) -> None:
        self.apply(self.events.on_message(m, now, self.sup.watch), now)

    def tick(self, now: float) -> None:
        w = self.sup.watch
        assess_stall(now, w.last_progress_max or w.started_t, w.last_hb, w.rank_node, w.exited_ok, LIMITS,
                     started=w.first_step_t is not None, busy=bool(w.busy))  # check_liveness, every tick
        w.heartbeat_age_max(now)  # publish, every tick


class IdleLauncher(Launcher):
    """Launches nothing: the sender processes play the ranks. What the supervisor does per tick still runs."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes

    def pool(self) -> list[str]:
        return self.nodes

    def launch(self, spec: LaunchSpec) -> dict[str, Any]:
        return {}

    def poll(self) -> list[Any]:
        return []

    def stop(self, grace_s: float = 3.0) -> None:
        return None


class FullSink:
    """The whole path of a real Supervisor: its authenticated telemetry socket, RunEvents, apply, the
    liveness check and publish (status.json once a second, the snapshot for the exporter) every tick, its
    fsynced journal, and the Prometheus endpoint scraped once a second (Prometheus' default is 15 s)."""

    def __init__(self, ranks: int, run_dir: Path) -> None:
        from orchestrator.attempt import AttemptWatch
        from orchestrator.journal import Journal
        from orchestrator.metrics.server import MetricsServer
        from orchestrator.supervisor import Supervisor
        from spec.config import RunConfig
        nodes = [f"n{i}" for i in range(-(-ranks // RANKS_PER_NODE))]
        self.journal = Journal(run_dir)
        self.journal.__enter__()
        self.sup = Supervisor(RunConfig(), run_dir, IdleLauncher(nodes), self.journal)
        self.srv = self.sup.telemetry
        spec = LaunchSpec(0, nodes, RANKS_PER_NODE, run_dir, self.srv.address, run_dir)
        self.sup.attempt, self.sup.watch = 0, AttemptWatch(spec, time.time())
        self.metrics = MetricsServer(lambda: self.sup.snap, host="127.0.0.1", port=0)
        self.metrics.start()
        self.next_scrape, self.scrapes, self.rows = time.time(), 0, 0

    def on_message(self, m: dict[str, Any], now: float) -> None:
        self.sup.apply(self.sup.events.on_message(m, now, self.sup.watch), now)

    def tick(self, now: float) -> None:
        self.sup.check_liveness(now)
        self.sup.publish()
        if now >= self.next_scrape:  # the exporter renders from the snapshot on every scrape
            with urllib.request.urlopen(self.metrics.url + "/metrics", timeout=5) as resp:
                resp.read()
            self.scrapes += 1
            self.next_scrape = now + 1.0

    def close(self) -> None:
        self.metrics.stop()
        self.sup.close()
        self.journal.__exit__(None, None, None)


def receive(sink: Any, srv: TelemetryServer, sending: Callable[[], bool]) -> int:
    """The supervisor's loop shape: select with a 50 ms timeout, drain, handle, tick; until the senders
    are done and the socket has been quiet for a tick."""
    n, quiet = 0, 0
    while sending() or quiet < 2:
        select.select([srv], [], [], TICK_S)
        now = time.time()
        msgs = srv.drain()
        for m in msgs:
            sink.on_message(m, now)
        n += len(msgs)
        quiet = 0 if msgs else quiet + 1
        sink.tick(now)
    return n


def make_sink(mode: str, ranks: int, run_dir: Path) -> tuple[Any, TelemetryServer, bytes]:
    """The receiver for ``mode`` with the socket it reads and the key the senders must seal with."""
    if mode.startswith("full"):
        sink = FullSink(ranks, run_dir)
        return sink, sink.srv, create_or_load_key(run_dir)
    return (ComponentSink(ranks) if mode == "components" else RealSink(ranks, run_dir)), TelemetryServer(KEY), KEY


def ingest_one(ranks: int, seconds: float, mode: str, profile: bool, senders: int,
               hb_hz: int = 1, step_hz: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        sink, srv, key = make_sink(mode, ranks, Path(tmp))
        srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        host, port = srv.sock.getsockname()[:2]
        ctx = mp.get_context("fork")
        units = -(-ranks // RANKS_PER_NODE) if mode == "full-agg" else ranks  # nodes (agents) or ranks
        parts = [range(i, units, senders) for i in range(senders)]
        counters = [ctx.Array("d", 2) for _ in parts]
        w0 = time.time() + 0.2
        play = agent_sender if mode == "full-agg" else sender
        procs = [ctx.Process(target=play, args=((host, port), part, seconds, c, w0, key, hb_hz, step_hz))
                 for part, c in zip(parts, counters)]
        for p in procs:
            p.start()
        prof = cProfile.Profile(time.process_time) if profile else None  # CPU, not the wait for a core
        if prof:
            prof.enable()
        c0 = time.process_time()
        receive(sink, srv, lambda: any(p.is_alive() for p in procs))
        cpu, wall = time.process_time() - c0, time.time() - w0
        got = srv.received  # datagrams accepted (an aggregate is one)
        if prof:
            prof.disable()
        for p in procs:
            p.join()
        if mode.startswith("full"):
            sink.close()  # closes its telemetry socket too
        else:
            srv.close()
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(int(os.environ.get("PROFILE_TOP", "12")))
        print(s.getvalue())
    sent = int(sum(c[0] for c in counters))
    send_s = max(c[1] for c in counters)
    rank_msgs = ranks * (hb_hz + step_hz) * int(seconds) * got / max(sent, 1)  # what the ranks sent, received
    return {"mode": mode, "ranks": ranks, "sent": sent, "offered_per_s": round(sent / send_s), "received": got, "lost_pct": round(100 * (1 - got / max(sent, 1)), 2),
            "msgs_per_s": round(got / wall), "cpu_s": round(cpu, 2), "us_per_msg": round(1e6 * cpu / max(got, 1), 2),
            "us_per_rank_msg": round(1e6 * cpu / max(rank_msgs, 1), 2),
            "cores_used": round(cpu / wall, 3), "max_msgs_per_s_1core": round(got / max(cpu, 1e-9)),
            "rows": sink.rows if mode == "components" else None, "hb_hz": hb_hz, "step_hz": step_hz}


def ingest(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (mode, ranks) cell ``--repeats`` times, the modes interleaved within each repeat so that a
    ratio between modes compares runs that shared the machine's load."""
    rows = []
    for rep in range(a.repeats):
        for n in (int(x) for x in a.ranks.split(",")):
            for mode in a.mode.split(","):
                rows.append(dict(ingest_one(n, a.seconds, mode, a.profile, a.senders, a.hb_hz, a.step_hz), repeat=rep,
                                 load1=round(os.getloadavg()[0], 2)))
                print(rows[-1], flush=True)
    print(table(rows, ["mode", "ranks", "offered_per_s", "sent", "received", "lost_pct", "msgs_per_s", "us_per_msg",
                       "cores_used", "max_msgs_per_s_1core", "us_per_rank_msg", "repeat", "load1"]))
    print(summary(rows, a.mode.split(",")))
    return rows


def _mmm(xs: list[float], fmt: str = "{:.3f}") -> str:
    return (fmt + " [" + fmt + "-" + fmt + "]").format(median(xs), min(xs), max(xs))


def summary(rows: list[dict[str, Any]], modes: list[str]) -> str:
    """Median [min-max] over the repeats per cell; with two modes, the second's cores over the first's,
    repeat by repeat (runs next to each other)."""
    lines = ["| mode | ranks | received | µs per datagram | µs per rank message | cores used | load1 |",
             "|---|---|---|---|---|---|---|"]
    for n in sorted({r["ranks"] for r in rows}):
        for mode in modes:
            c = [r for r in rows if r["ranks"] == n and r["mode"] == mode]
            recv = [100 * r["received"] / max(r["sent"], 1) for r in c]
            lines.append(f"| {mode} | {n} | {_mmm(recv, '{:.1f}')}% | {_mmm([r['us_per_msg'] for r in c], '{:.1f}')} | "
                         f"{_mmm([r['us_per_rank_msg'] for r in c], '{:.1f}')} | {_mmm([r['cores_used'] for r in c])} | "
                         f"{_mmm([r['load1'] for r in c], '{:.1f}')} |")
        if len(modes) == 2:
            pairs = {(r["repeat"]): {} for r in rows if r["ranks"] == n}
            for r in rows:
                if r["ranks"] == n:
                    pairs[r["repeat"]][r["mode"]] = r
            ratio = [p[modes[1]]["us_per_rank_msg"] / p[modes[0]]["us_per_rank_msg"] for p in pairs.values()
                     if len(p) == 2]
            if ratio:
                lines.append(f"| {modes[1]} / {modes[0]} | {n} | | | {_mmm(ratio)} (CPU per rank message) | | |")
    return "\n".join(lines)


# ---- (a) step-time overhead -------------------------------------------------------------------------------
def overhead(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Median step time, orchestrator vs torchrun, same config, no faults, interleaved repeats."""
    import json
    from benchmarks import bench_goodput_vs_torchrun as g
    from benchmarks.goodput_launchers import run_elastic, run_orchestrator
    cfg = dict(g.BASE, chaos=[], train=dict(g.BASE["train"], steps=a.steps, step_sleep_s=a.step_sleep_s))
    gargs = argparse.Namespace(max_restarts=0, hang_cap_s=1e9, replace_delay_s=0.0, timeout_s=900.0)
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sup-") as tmp:
        work = Path(tmp)
        for i in range(a.repeats):
            for launcher in ("orchestrator", "torchrun"):
                name = f"{launcher}-{i}"
                cap: list[dict[str, Any]] = []
                r = (run_orchestrator(cfg, work, name) if launcher == "orchestrator"
                     else run_elastic("torchrun", cfg, work, name, gargs, rows_out=cap))
                rows = ([json.loads(l) for l in (work / name / "metrics.jsonl").read_text().splitlines()]
                        if launcher == "orchestrator" else cap)
                times = [float(x["step_time"]) for x in rows if x.get("step") is not None and x["step"] >= 5]
                out.append({"launcher": launcher, "repeat": i, "median_step_s": round(median(times), 5),
                            "steps": len(times), "wall_s": r["wall_s"],
                            "load1_after": round(os.getloadavg()[0], 2)})
                print(out[-1], flush=True)
    med = {k: median(x["median_step_s"] for x in out if x["launcher"] == k) for k in ("orchestrator", "torchrun")}
    print(table(out))
    print(f"median step: orchestrator {med['orchestrator']:.5f}s, torchrun {med['torchrun']:.5f}s, "
          f"overhead {100 * (med['orchestrator'] / med['torchrun'] - 1):+.2f}%")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("--ranks", default="1024,4096,16384")
    i.add_argument("--seconds", type=float, default=8.0)
    i.add_argument("--mode", default="components,real,full")
    i.add_argument("--hb-hz", type=int, default=2, help="heartbeats per rank per second (default: the default "
                   "health.heartbeat_interval_s of 0.5 s)")
    i.add_argument("--step-hz", type=int, default=1, help="step rows per rank per second")
    i.add_argument("--repeats", type=int, default=1)
    i.add_argument("--profile", action="store_true")
    i.add_argument("--senders", type=int, default=2, help="sender processes (one Python sender tops out "
                   "near 20k datagrams/s on a busy core)")
    o = sub.add_parser("overhead")
    o.add_argument("--repeats", type=int, default=2)
    o.add_argument("--steps", type=int, default=150)
    o.add_argument("--step-sleep-s", type=float, default=0.0)
    for p in (i, o):
        p.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    print("machine:", machine(), flush=True)
    run: Callable[[argparse.Namespace], list[dict[str, Any]]] = ingest if a.cmd == "ingest" else overhead
    rows = run(a)
    save_json(a.json, f"supervisor_{a.cmd}", {"args": vars(a), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
