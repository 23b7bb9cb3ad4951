"""Collective health: all-reduce latency and bus bandwidth over all ranks, then pairwise ping-pong
rounds that point at the slow or failing rank, by rank and node.

Why pairwise: in an all-reduce every rank waits for the slowest, so all ranks measure the same time and
the culprit is invisible. In round k each rank exchanges with ``rank ^ 2**k`` (log2(n) rounds, every
rank busy every round, rounds separated by a sync so one slow pair cannot delay the next round). A slow
rank is slow in *every* pair it is in, a healthy rank only in the one pair it shares with the culprit,
so the minimum of a rank's pair times singles the culprit out.

:func:`collective_check` runs inside an existing process group (the trainer's, at start-up);
:func:`run_collective_probe` spawns one local process per rank (:mod:`health.probes.collective_worker`)
and kills them all at the deadline, then blames a rank from exit codes and how far each rank got.
Every wait has a timeout: nothing here may rely on the 30-minute gloo / 10-minute NCCL defaults.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from health.probes.result import ProbeResult


@dataclass
class CollectiveReport:
    world_size: int
    nodes: list[str]  # node of each rank
    allreduce_s: float  # median all-reduce time, slowest rank's view
    busbw_gbps: float  # all-reduce bus bandwidth: algbw * 2(n-1)/n, as nccl-tests report it
    pair_s: dict[int, float]  # each rank's fastest pair (best round trip): high only if slow with every partner
    scores: dict[int, float]  # pair_s / median over ranks
    slow_ranks: list[int] = field(default_factory=list)
    size_bytes: int = 0
    # a slow *link* (not a slow rank): each node's cross-node pair times against the cross-node pairs
    # that do not involve it; the node whose every cross-node pair is slow is at the slow link's end
    link_scores: dict[str, float] = field(default_factory=dict)
    slow_link_nodes: list[str] = field(default_factory=list)


def _wait(work: Any, timeout_s: float) -> None:
    """Wait for one async op with a hard timeout (raises on timeout or peer failure)."""
    work.wait(timedelta(seconds=timeout_s))


def _settle(buf: Any) -> None:
    """On a GPU the op may still be running after ``wait`` returns (it only orders the CUDA stream):
    synchronise before reading the clock, or the time is the enqueue time."""
    if buf.is_cuda:
        import torch
        torch.cuda.synchronize(buf.device)


def _timed_allreduce(dist: Any, buf: Any, iters: int, timeout_s: float, delay_s: float) -> list[float]:
    out = []
    for i in range(iters + 1):  # first one is a warm-up: connection setup, allocation
        _settle(buf)
        t0 = time.perf_counter()
        if delay_s:
            time.sleep(delay_s)
        _wait(dist.all_reduce(buf, async_op=True), timeout_s)
        _settle(buf)
        if i:
            out.append(time.perf_counter() - t0)
    return out


def _ping_pong(dist: Any, buf: Any, partner: int, first: bool, iters: int, timeout_s: float,
               delay_s: float) -> float:
    """Best round-trip time with one partner; ``first`` sends first, the other answers. The minimum,
    not the median: scheduler noise only ever adds time, while a slow rank is slow on every trip."""
    times = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        for sending in ((True, False) if first else (False, True)):
            if delay_s:
                time.sleep(delay_s / 2)  # a slow rank is slow on every message it handles
            op = dist.isend if sending else dist.irecv
            _wait(op(buf, partner), timeout_s)
            _settle(buf)
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def _sync(dist: Any, torch: Any, timeout_s: float) -> None:
    from trainer.device import collective_device  # NCCL: a CUDA tensor on this rank's GPU
    flag = torch.zeros(1, device=collective_device())
    _wait(dist.all_reduce(flag, async_op=True), timeout_s)
    _settle(flag)


def collective_check(node: str, timeout_s: float = 30.0, size_bytes: int = 1 << 18, iters: int = 5,
                     slow_threshold: float = 2.0, inject_delay_s: float = 0.0,
                     progress: Callable[[str], None] | None = None) -> CollectiveReport:
    """Run inside an initialised default process group, on every rank; every rank gets the report.

    Raises (RuntimeError from torch) when a peer times out or fails; the caller decides what then.
    ``inject_delay_s`` makes this rank slow on purpose (tests, chaos).
    """
    import torch
    import torch.distributed as dist

    note = progress or (lambda phase: None)
    from trainer.device import collective_device

    rank, n = dist.get_rank(), dist.get_world_size()
    buf = torch.ones(max(size_bytes // 4, 1), dtype=torch.float32, device=collective_device())
    note("barrier")
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    else:
        _sync(dist, torch, timeout_s)
    note("allreduce")
    ar = statistics.median(_timed_allreduce(dist, buf, iters, timeout_s, inject_delay_s))
    note("pairwise")
    pairs: dict[int, float] = {}
    for k in range(max(n - 1, 0).bit_length()):
        _sync(dist, torch, timeout_s)
        partner = rank ^ (1 << k)
        if partner < n:
            pairs[partner] = _ping_pong(dist, buf, partner, rank < partner, iters, timeout_s,
                                        inject_delay_s)
    note("gather")
    gathered: list[Any] = [None] * n
    dist.all_gather_object(gathered, (node, ar, pairs))
    note("done")
    return analyse(gathered, size_bytes, slow_threshold)


def analyse(gathered: list[tuple[str, float, dict[int, float]]], size_bytes: int,
            slow_threshold: float) -> CollectiveReport:
    """Turn every rank's (node, all-reduce median, {partner: pair median}) into a verdict. Pure."""
    n = len(gathered)
    nodes = [g[0] for g in gathered]
    ar = max(g[1] for g in gathered)
    pair_s = {r: min(g[2].values()) for r, g in enumerate(gathered) if g[2]}
    med = statistics.median(pair_s.values()) if pair_s else 0.0
    scores = {r: (v / med if med > 0 else 1.0) for r, v in pair_s.items()}
    slow = sorted(r for r, s in scores.items() if s >= slow_threshold) if n > 2 else []
    busbw = (size_bytes / ar) * 2 * (n - 1) / n / 1e9 if ar > 0 and n > 1 else 0.0
    links = link_scores(gathered)
    slow_links = sorted(nd for nd, sc in links.items() if sc >= slow_threshold)
    return CollectiveReport(n, nodes, ar, busbw, pair_s, scores, slow, size_bytes, links, slow_links)


def link_scores(gathered: list[tuple[str, float, dict[int, float]]]) -> dict[str, float]:
    """node -> median time of its cross-node pairs / median of the cross-node pairs that do not involve
    it. Needs three nodes or more: with two, both ends of the one link look the same. Pure."""
    cross: list[tuple[str, str, float]] = []
    for r, (node, _, pairs) in enumerate(gathered):
        for partner, t in pairs.items():
            if r < partner < len(gathered) and gathered[partner][0] != node:
                cross.append((node, gathered[partner][0], t))
    nodes = sorted({n for a, b, _ in cross for n in (a, b)})
    if len(nodes) < 3:
        return {}
    out = {}
    for nd in nodes:
        mine = [t for a, b, t in cross if nd in (a, b)]
        others = [t for a, b, t in cross if nd not in (a, b)]
        if mine and others and statistics.median(others) > 0:
            out[nd] = statistics.median(mine) / statistics.median(others)
    return out


def report_to_results(rep: CollectiveReport) -> list[ProbeResult]:
    """One result per node: 'degraded' (fault kind straggler) where a slow rank lives, else 'ok'."""
    out = []
    for node in dict.fromkeys(rep.nodes):
        ranks = [r for r, nd in enumerate(rep.nodes) if nd == node]
        slow = [r for r in ranks if r in rep.slow_ranks]
        ev = {"ranks": ranks, "world_size": rep.world_size, "allreduce_ms": round(rep.allreduce_s * 1e3, 3),
              "busbw_gbps": round(rep.busbw_gbps, 4), "size_bytes": rep.size_bytes,
              "pair_ms": {str(r): round(rep.pair_s[r] * 1e3, 3) for r in ranks if r in rep.pair_s},
              "scores": {str(r): round(rep.scores[r], 2) for r in ranks if r in rep.scores},
              "slow_ranks": slow}
        if node in rep.slow_link_nodes:
            ev["link_score"] = round(rep.link_scores[node], 2)
        if slow:
            out.append(ProbeResult("collective", node, "degraded", ev, "straggler"))
        elif node in rep.slow_link_nodes:
            out.append(ProbeResult("collective", node, "degraded", ev, "slow_link"))
        else:
            out.append(ProbeResult("collective", node, "ok", ev))
    return out


PHASES = ("started", "joined", "barrier", "allreduce", "pairwise", "gather", "done")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def probe_rank_env(rank: int, world_size: int, node: str, workdir: Path, timeout_s: float, startup_s: float,
                   backend: str) -> dict[str, str]:
    """What a probe rank is told, wherever it runs."""
    root = str(Path(__file__).resolve().parents[2])
    return {"OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": str(world_size),
            "ORCH_PROBE_DIR": str(workdir), "ORCH_PROBE_NODE": node,
            # ranks time out later than the parent's deadline, so the parent (which can see
            # every rank) judges first, not a healthy rank that gave up on a hung peer
            "ORCH_PROBE_TIMEOUT": str(timeout_s + 10.0),
            "ORCH_PROBE_INIT_TIMEOUT": str(startup_s + timeout_s + 10.0),
            "ORCH_PROBE_BACKEND": backend,
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def placed_exit_path(workdir: Path, rank: int) -> Path:
    """Where the agent that started probe rank ``rank`` writes its exit code."""
    return workdir / f"rank{rank}.exit"


class PlacedWorker:
    """A probe rank that a node agent started (``run_placed_collective_probe``): its exit code arrives
    as a file in the probe's directory; the agent kills it at its deadline."""

    def __init__(self, exit_path: Path) -> None:
        self.exit_path, self.returncode, self.pid = exit_path, None, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = int(self.exit_path.read_text())
            except (OSError, ValueError):
                pass
        return self.returncode


def run_placed_collective_probe(nodes_of_rank: list[str], workdir: Path, timeout_s: float,
                                start: Callable[[int, str, dict[str, str]], bool],
                                startup_s: float = 120.0, backend: str = "gloo") -> list[ProbeResult]:
    """The probe with each rank started on its node by ``start(rank, node, env)`` (a node agent), the
    ranks meeting through a FileStore in ``workdir`` (a fresh directory on the shared file system), so
    no address or port has to be chosen from here. Judged as :func:`run_collective_probe` judges."""
    world_size = len(nodes_of_rank)
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[Any] = []
    for r, node in enumerate(nodes_of_rank):
        env = {**probe_rank_env(r, world_size, node, workdir, timeout_s, startup_s, backend),
               "ORCH_PROBE_STORE": str(workdir / "store")}
        worker = PlacedWorker(placed_exit_path(workdir, r))
        if not start(r, node, env):
            worker.returncode = 126  # the agent could not be asked: that rank failed to start
            placed_exit_path(workdir, r).write_text("126")
        procs.append(worker)
    return _judge(procs, list(nodes_of_rank), workdir, timeout_s, startup_s)


def _spawn(world_size: int, nodes: list[str], workdir: Path, timeout_s: float, inject: dict[int, str],
           delay_s: float, slow_rank: int | None, backend: str, master_addr: str = "127.0.0.1",
           node_argv: Mapping[str, list[str]] | None = None,
           startup_s: float = 0.0) -> list[subprocess.Popen[bytes]]:
    """``master_addr``: rank 0's address as the other ranks reach it; ``node_argv``: a prefix that runs a
    rank inside its node (e.g. ``ip netns exec NS``), so the collective crosses the nodes' network."""
    port = _free_port(master_addr) if not node_argv else _free_port()
    procs = []
    for r in range(world_size):
        env = {**os.environ, **probe_rank_env(r, world_size, nodes[r], workdir, timeout_s, startup_s, backend),
               "MASTER_ADDR": master_addr, "MASTER_PORT": str(port), "ORCH_PROBE_INJECT": inject.get(r, ""),
               "ORCH_PROBE_DELAY": str(delay_s if r == slow_rank else 0.0)}
        err = open(workdir / f"rank{r}.err", "wb")
        prefix = list((node_argv or {}).get(nodes[r], []))
        procs.append(subprocess.Popen(prefix + [sys.executable, "-m", "health.probes.collective_worker"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))
        err.close()
    return procs


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout_s: float, grace_s: float = 1.0,
              workdir: Path | None = None, startup_s: float = 0.0) -> tuple[bool, dict[int, float]]:
    """Wait until all exit or the deadline; once one rank fails the rest are blocked on it, so give
    them ``grace_s`` and stop. Kills whatever is left. Returns (every rank exited by itself, the
    time each rank was first seen to have exited with an error).

    Start-up (importing torch, joining the process group) has its own budget, ``startup_s``: on a busy
    node it takes seconds, and a slow import is not a slow network; ``timeout_s`` starts once every
    rank has joined (seen in ``workdir``'s phase files)."""
    deadline = time.monotonic() + startup_s + timeout_s
    joined = workdir is None
    failed_at: dict[int, float] = {}
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if not joined and all(c is not None or _phase(workdir, r) >= 1  # type: ignore[arg-type]
                              for r, c in enumerate(codes)):
            joined, deadline = True, min(deadline, time.monotonic() + timeout_s)
        for r, c in enumerate(codes):
            if c not in (None, 0) and r not in failed_at:
                failed_at[r] = time.monotonic()
        if all(c is not None for c in codes):
            return True, failed_at
        if failed_at:
            deadline = min(deadline, min(failed_at.values()) + grace_s)
        time.sleep(0.02)
    local = [p for p in procs if isinstance(p, subprocess.Popen)]  # placed ranks: their agent kills them
    for p in local:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in local:
        p.wait()
    return False, failed_at


def _phase(workdir: Path, rank: int) -> int:
    try:
        return PHASES.index((workdir / f"rank{rank}.phase").read_text().strip())
    except (OSError, ValueError):
        return -1


def _tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _blame(procs: list[subprocess.Popen[bytes]], failed_at: dict[int, float], workdir: Path,
           nodes: list[str], timeout_s: float) -> list[ProbeResult]:
    """No report: name the rank that crashed first (its peers fail after it, with 'connection closed'),
    or else the ranks that got least far before the deadline."""
    phases = [_phase(workdir, r) for r in range(len(procs))]
    killed = {r for r, p in enumerate(procs) if r not in failed_at}
    if failed_at:
        first = min(failed_at.values())
        culprits, kind = sorted(r for r, t in failed_at.items() if t - first < 0.05), "rank_crash"
    elif min(phases) < max(phases):
        culprits, kind = [r for r, ph in enumerate(phases) if ph == min(phases)], "collective_timeout"
    else:
        culprits, kind = list(range(len(procs))), "collective_timeout"
    out = []
    for node in dict.fromkeys(nodes):
        ranks = [r for r, nd in enumerate(nodes) if nd == node]
        ev: dict[str, Any] = {"ranks": ranks, "timeout_s": timeout_s,
                              "phase": {str(r): PHASES[phases[r]] if phases[r] >= 0 else "not started"
                                        for r in ranks}}
        bad = [r for r in ranks if r in culprits]
        if bad:
            ev["failing_ranks"] = bad
            ev["exit_codes"] = {str(r): procs[r].returncode for r in bad if r not in killed}
            ev["stderr_tail"] = {str(r): _tail(workdir / f"rank{r}.err") for r in bad}
            out.append(ProbeResult("collective", node, "failed", ev, kind))
        else:
            ev["reason"] = f"blocked by rank(s) {culprits}"
            out.append(ProbeResult("collective", node, "skipped", ev))
    return out


def run_collective_probe(world_size: int, nodes_of_rank: list[str] | dict[int, str], timeout_s: float,
                         slow_rank: int | None = None, slow_factor: float = 4.0,
                         dead_rank: int | None = None, hang_rank: int | None = None,
                         nominal_op_s: float = 0.005, backend: str = "gloo", master_addr: str = "127.0.0.1",
                         node_argv: Mapping[str, list[str]] | None = None,
                         startup_s: float = 120.0) -> list[ProbeResult]:
    """Spawn ``world_size`` local ranks, run :func:`collective_check`, and judge every node.

    Test hooks: ``slow_rank`` sleeps ``(slow_factor - 1) * nominal_op_s`` in every operation,
    ``dead_rank`` exits with code 3 before joining, ``hang_rank`` joins and then never answers.
    Never hangs: every process is killed at ``timeout_s``.
    """
    nodes = [nodes_of_rank[r] for r in range(world_size)]
    inject = {r: kind for r, kind in ((dead_rank, "die"), (hang_rank, "hang")) if r is not None}
    delay = max(slow_factor - 1.0, 0.0) * nominal_op_s
    with tempfile.TemporaryDirectory(prefix="orch-collective-") as tmp:
        workdir = Path(tmp)
        procs = _spawn(world_size, nodes, workdir, timeout_s, inject, delay, slow_rank, backend, master_addr,
                       node_argv, startup_s)
        return _judge(procs, nodes, workdir, timeout_s, startup_s)


def _judge(procs: list[Any], nodes: list[str], workdir: Path, timeout_s: float,
           startup_s: float) -> list[ProbeResult]:
    """Wait for the ranks, then the report rank 0 wrote, or else the blame for who stopped it."""
    clean, failed_at = _wait_all(procs, timeout_s, workdir=workdir, startup_s=startup_s)
    result = workdir / "result.json"
    if clean and result.exists() and all(p.returncode == 0 for p in procs):
        data = json.loads(result.read_text())
        data["pair_s"] = {int(k): v for k, v in data["pair_s"].items()}
        data["scores"] = {int(k): v for k, v in data["scores"].items()}
        return report_to_results(CollectiveReport(**data))
    return _blame(procs, failed_at, workdir, nodes, timeout_s)
