"""Fault injection from run.yaml's ``chaos`` list, consulted at named points of a rank's life.

One module for every backend: the local cluster and Slurm run the same trainer, so the same run.yaml
injects the same faults. Each fault fires once per run: the firing rank writes ``chaos/fired-<i>``
before acting, and a relaunched rank never re-fires a fault whose marker exists.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import torch

from spec.config import ChaosFault


def is_dtensor(t: torch.Tensor) -> bool:
    """A parameter sharded by FSDP2/TP: hooks on it see gradients after their reduction."""
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)

STEP_FAULTS = ("rank_crash", "node_failure", "hang", "gpu_error", "collective_timeout")
EVERY_RANK = ("loss_spike", "bad_batch", "diverge")  # act on every rank; rank 0 writes the marker
NET_FAULTS = ("partition", "slow_link")  # real network faults on namespaced nodes (trainer.node_net)


class Chaos:
    """What this rank must do to itself at each point, given the configured faults."""

    def __init__(self, faults: list[ChaosFault], run_dir: Path, rank: int, node_index: int,
                 ranks_per_node: int, attempt: int = 0, node_name: str | None = None) -> None:
        self.faults = [(i, f) for i, f in enumerate(faults) if f.attempt is None or f.attempt == attempt]
        self.dir = run_dir / "chaos"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.node_index, self.rpn = rank, node_index, ranks_per_node
        self._fired_here: set[int] = {i for i, _ in self.faults if self._marker(i).exists()}
        self._first_step: tuple[int, float] | None = None  # (step, monotonic time) at this rank's first step
        self._unshape_at: int | None = None
        self.node_name = node_name  # sdc follows the physical node, not its position in an attempt
        self.step = 0  # the step being computed (an sdc corrupts it, replays included)
        self._recs: dict[int, dict[str, object]] = {}

    def _marker(self, i: int) -> Path:
        return self.dir / f"fired-{i}"

    def _target_rank(self, f: ChaosFault) -> int:
        if f.rank is not None:
            return f.rank
        if f.node is not None:
            return f.node * self.rpn
        return 0

    def _mine(self, f: ChaosFault) -> bool:
        if f.fault in EVERY_RANK:
            return True
        return self._target_rank(f) == self.rank

    def _take(self, kind: tuple[str, ...], step: int, or_after: bool = False) -> ChaosFault | None:
        """The fault of these kinds due now for this rank; marks it fired (durably) before acting."""
        for i, f in self.faults:
            due = f.step <= step if or_after else f.step == step
            if f.fault in kind and due and i not in self._fired_here and self._mine(f):
                self._fired_here.add(i)
                if self.rank == self._target_rank(f) or f.fault not in EVERY_RANK:
                    self._write_marker(i, f, step)
                return f
        return None

    def _write_marker(self, i: int, f: ChaosFault, step: int, **extra: object) -> None:
        """The injection's ground truth (what, where, when: wall and monotonic time), fsynced before the
        fault acts, so a detection latency can start at the injection rather than at our own estimate."""
        rec = {"index": i, "fault": f.fault, "step": step, "rank": self.rank, "node_index": self.node_index,
               "t": time.time(), "mono": time.monotonic(), **extra}
        fd = os.open(self._marker(i), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, (json.dumps(rec) + "\n").encode())
        os.fsync(fd)
        os.close(fd)

    def at_step_start(self, step: int) -> None:
        """Crash, kill the node, or hang: faults that end or stall this process; cut or slow the link."""
        self.step = step
        self._network_faults(step)
        f = self._take(STEP_FAULTS, step)
        if f is None:
            return
        if f.fault == "rank_crash":
            os._exit(13)
        if f.fault == "gpu_error":
            os.write(2, b"RuntimeError: CUDA error: an illegal memory access was encountered (Xid 79)\n")
            os._exit(1)
        if f.fault == "collective_timeout":
            os.write(2, b"Watchdog caught collective operation timeout: WorkNCCL(OpType=ALLREDUCE)\n")
            os._exit(6)
        if f.fault == "node_failure":
            os.kill(os.getppid(), signal.SIGKILL)  # the node agent; its ranks die with it
            time.sleep(60)
        if f.fault == "hang":
            while True:  # stuck: alive (heartbeats go on) but no progress, peers block in collectives
                time.sleep(3600)

    def _network_faults(self, step: int) -> None:
        """partition: the node's link goes down for about ``steps`` steps' time (its processes keep
        running; the node agent brings it back when the attempt's ranks are gone); slow_link: a tbf rate
        limit on the node's link from ``step`` to ``step + steps``."""
        from trainer import node_net as netns
        now = time.monotonic()
        if self._first_step is None:
            self._first_step = (step, now)
        netif = netns.node_netif()
        if self._unshape_at is not None and step >= self._unshape_at and netif is not None:
            netns.unshape(netif)
            self._unshape_at = None
        f = self._take(NET_FAULTS, step)
        if f is None:
            return
        if netif is None:
            os.write(2, f"chaos: {f.fault} needs namespaced nodes (root, iproute2); not injected\n".encode())
            return
        if f.fault == "slow_link":
            netns.shape(netif, f.rate_kbit)
            self._unshape_at = step + f.steps
            return
        first_step, first_t = self._first_step
        per_step = (now - first_t) / (step - first_step) if step > first_step else 1.0
        netns.set_link(netif, False)
        timer = threading.Timer(max(per_step, 0.05) * f.steps, netns.heal, args=(netif,))
        timer.daemon = True
        timer.start()

    def straggle_factor(self, step: int) -> float:
        """> 1 while this rank is an injected straggler (its step takes this many times longer)."""
        for i, f in self.faults:
            if f.fault == "straggler" and self._target_rank(f) == self.rank and f.step <= step < f.step + f.steps:
                if i not in self._fired_here:
                    self._fired_here.add(i)
                    self._write_marker(i, f, step)
                return f.slowdown
        return 1.0

    def corrupt_batch(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loss_spike: replace the batch with random bytes (a corrupted shard of data)."""
        if self._take(("loss_spike",), step) is None:
            return x, y
        g = torch.Generator().manual_seed(1234 + step)
        return (torch.randint(0, 256, x.shape, generator=g), torch.randint(0, 256, y.shape, generator=g))

    def poison_loss(self, step: int) -> bool:
        """nan: this rank's loss becomes NaN at this step."""
        return self._take(("nan",), step) is not None

    def during_checkpoint(self, step: int) -> str | None:
        """ckpt_crash: die between writing shards and the commit; disk_full: the write fails ENOSPC."""
        f = self._take(("ckpt_crash", "disk_full"), step, or_after=True)
        return f.fault if f else None

    # ---- faults that replays tell apart (trainer.replay) -------------------------------------------
    def _rec(self, i: int) -> dict[str, object] | None:
        """The marker's record (cached once read: the sdc hook asks on every forward)."""
        if i not in self._recs:
            try:
                self._recs[i] = json.loads(self._marker(i).read_text())
            except (OSError, ValueError):
                return None
        return self._recs[i]

    def sdc_active(self, step: int, target: str = "output") -> bool:
        """sdc: this rank's node is the faulty one and ``step`` is at or past the fault's step. The node is
        the one at index ``node`` when it first fires (its name goes in the marker); in later attempts the
        fault stays with that node, wherever it sits, as a faulty GPU would."""
        for i, f in self.faults:
            if f.fault != "sdc" or step < f.step or f.target != target:
                continue
            rec = self._rec(i) if i in self._fired_here else None
            if rec is not None and rec.get("node") is not None:
                if rec["node"] == self.node_name:
                    return True
                continue
            if f.node is not None and f.node == self.node_index:
                if i not in self._fired_here and self.rank == self._target_rank(f):
                    self._fired_here.add(i)
                    self._write_marker(i, f, step, node=self.node_name)
                return True
        return False

    def install_sdc(self, parts: list[torch.nn.Module]) -> None:
        """A faulty GPU, simulated: while ``sdc_active``, the output of each model part this rank holds
        (logits, or a pipeline stage's activations) comes out negated and eight times too large,
        deterministically: the same input gives the same wrong result, so a replay on this node
        reproduces it and one elsewhere does not. ``target: grad`` corrupts only the weight gradients
        this rank computes (one element's exponent bits set: +inf, before any reduction), so the loss
        stays right and only the gradients tell."""
        targets = {f.target for _, f in self.faults if f.fault == "sdc"}
        if "output" in targets:
            for part in parts:
                part.register_forward_hook(lambda _m, _i, out: out * -8.0 if self.sdc_active(self.step) else None)
        if "grad" in targets:  # plain (data-parallel) parameters; a DTensor's hook sees the reduced grad
            for p in (p for part in parts for p in part.parameters() if p.requires_grad and not is_dtensor(p)):
                p.register_hook(self._corrupt_grad)

    def _corrupt_grad(self, g: torch.Tensor) -> torch.Tensor | None:
        if not self.sdc_active(self.step, "grad"):
            return None
        g = g.clone()
        g.view(-1)[0] = float("inf")
        return g

    def _bad_samples(self, step: int, idx: list[int]) -> set[int]:
        """bad_batch: the samples of the global batch at its step (every replica's share, so the spike is
        clear of the guard's threshold early in training too), kept in the marker, so the same samples are
        bad on any hardware, at replay and after a relaunch."""
        out: set[int] = set()
        for i, f in self.faults:
            if f.fault != "bad_batch":
                continue
            rec = self._rec(i) if i in self._fired_here else None
            if rec is not None and "samples" in rec:
                out.update(int(s) for s in rec["samples"])  # type: ignore[union-attr]
            elif step == f.step and i not in self._fired_here:
                self._fired_here.add(i)
                bad = list(idx)
                if self.rank == 0:
                    self._write_marker(i, f, step, samples=bad)
                out.update(bad)
        return out

    def poison_data(self, step: int, global_idx: list[int], mine: list[int], x: torch.Tensor,
                    y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bad samples are stored with every byte's top bit flipped (a corrupted shard): bytes a text
        corpus never has, so their loss is far above normal on any hardware."""
        bad = self._bad_samples(step, global_idx)
        if not bad or not any(s in bad for s in mine):
            return x, y
        flip = torch.tensor([128 if s in bad else 0 for s in mine], dtype=x.dtype)[:, None]
        return x ^ flip, y ^ flip

    def diverge(self, step: int, parts: list[torch.nn.Module]) -> None:
        """diverge: every rank negates its output layer at this step, identically: the model itself goes
        bad (it now predicts the least likely byte, on every batch and every node) until the rollback
        restores a checkpoint."""
        if self._take(("diverge",), step) is None:
            return
        with torch.no_grad():
            for part in parts:
                head = getattr(part, "head", None)
                if head is not None:
                    head.weight.mul_(-1.0)
