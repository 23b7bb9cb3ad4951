"""What a replay measures on each rank and gathers in one all-gather: the loss, and a gradient
fingerprint taken before any reduction, per rank and per data-parallel replica.

Why a gradient fingerprint: a fault that leaves the loss right but spoils the gradients (a faulty GPU in
the backward pass) is invisible to a loss comparison; and after the data-parallel all-reduce every replica
holds the same (spoiled) gradients, so the fingerprint must be taken on the local gradients, as backward
produces them. It is the sum of squares of every local weight gradient, in float64 (the norm² of the
rank's own gradient): the same batch on the same weights gives the same value on any healthy node
(deterministic kernels), a scaled, Inf or NaN gradient does not. A sign flip alone would go unseen.
Parameters sharded as DTensors (FSDP2, TP) reduce inside their own backward, so their hooks only see
reduced gradients: there the fingerprint is not taken and the replay compares losses only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer.chaos import is_dtensor
from trainer.device import flags_tensor

NOT_TAKEN = -1.0  # a fingerprint is >= 0 (or inf/nan); -1 says this rank could not take one


class GradPrint:
    """Param hooks that sum the squares of the local gradients while ``on`` (replays only: no cost
    in ordinary steps). Registered after the chaos hooks, so they see what a faulty node computed."""

    def __init__(self, parts: list[nn.Module]) -> None:
        params = [p for part in parts for p in part.parameters() if p.requires_grad]
        self.usable = bool(params) and not any(is_dtensor(p) for p in params)
        self.on = False
        self.acc = torch.zeros((), dtype=torch.float64)
        if self.usable:
            for p in params:
                p.register_hook(self._add)

    def _add(self, g: torch.Tensor) -> None:
        if self.on:
            self.acc = self.acc + g.detach().double().square().sum().cpu()

    def start(self) -> None:
        self.acc, self.on = torch.zeros((), dtype=torch.float64), self.usable

    def take(self) -> float:
        self.on = False
        return float(self.acc) if self.usable else NOT_TAKEN


class StagePrint:
    """Forward hooks on each model part this rank holds (a pipeline stage, or the whole model): the sum of
    squares of the part's output over a replay's micro-batches, per part. Registered after the chaos
    hooks. A replica spanning nodes is narrowed with them: the first stage, in pipeline order, whose
    output differs between two computations of one batch is where it went wrong (its input, the stage
    before's output, agreed)."""

    SLOTS = 2  # parts per rank (interleaved 1F1B holds two)

    def __init__(self, parts: list[nn.Module], stage_ids: list[int]) -> None:
        self.ids = stage_ids[: self.SLOTS]
        self.on = False
        self.acc = [0.0] * len(self.ids)
        for k, part in enumerate(parts[: self.SLOTS]):
            part.register_forward_hook(lambda _m, _i, out, k=k: self._add(k, out))

    def _add(self, k: int, out: Any) -> None:
        if self.on and isinstance(out, torch.Tensor):
            local = out.to_local() if is_dtensor(out) else out
            self.acc[k] += float(local.detach().double().square().sum())

    def start(self) -> None:
        self.acc, self.on = [0.0] * len(self.ids), True

    def take(self) -> list[float]:
        """(stage id, fingerprint) for each slot, flattened; stage -1 marks an empty slot."""
        self.on = False
        out: list[float] = []
        for k in range(self.SLOTS):
            out += [float(self.ids[k]), self.acc[k]] if k < len(self.ids) else [-1.0, 0.0]
        return out


@dataclass
class Gathered:
    """Every rank's row of one all-gather, folded per replica."""

    loss: dict[int, float]  # replica → its loss (weighted over the ranks that compute one)
    grad: dict[int, float]  # replica → Σ of its ranks' gradient fingerprints (replicas that took one)
    nodes: dict[int, set[int]]  # replica → node indices of its ranks
    rank_loss: dict[int, float]  # rank → the loss it computed itself
    rank_node: dict[int, int]
    rank_replica: dict[int, int]
    glob: float  # the global loss
    flagged: bool  # any rank raised the flag
    stages: dict[int, dict[int, float]] = field(default_factory=dict)  # replica → stage → Σ output prints
    stage_ranks: dict[tuple[int, int], set[int]] = field(default_factory=dict)  # (replica, stage) → ranks


def gather(engine: Any, rank: int, node: int, loss: float, grad: float = NOT_TAKEN,
           flag: float = 0.0, stages: list[float] | None = None) -> Gathered:
    """One all-gather of (rank, replica, node, weighted loss, weight, flag, own loss, fingerprint,
    then (stage, output print) per part slot)."""
    w = float(engine.loss_weight)
    t = flags_tensor([float(rank), float(engine.dp_rank), float(node), loss * w if w else 0.0, w, flag,
                      loss, grad] + (stages or [-1.0, 0.0] * StagePrint.SLOTS))
    rows = [t]
    if dist.is_initialized():
        rows = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, t)
    g = Gathered({}, {}, {}, {}, {}, {}, 0.0, False)
    sums: dict[int, list[float]] = {}
    prints: dict[int, list[float]] = {}
    for row in rows:
        r, d, n, lw, wt, fl, own, gp, *slots = row.tolist()
        r, d = int(r), int(d)
        for sid, sp in zip(slots[::2], slots[1::2]):
            if sid >= 0:
                per = g.stages.setdefault(d, {})
                per[int(sid)] = per.get(int(sid), 0.0) + sp
                g.stage_ranks.setdefault((d, int(sid)), set()).add(r)
        g.nodes.setdefault(d, set()).add(int(n))
        g.rank_loss[r], g.rank_node[r], g.rank_replica[r] = own, int(n), d
        g.flagged = g.flagged or fl > 0
        prints.setdefault(d, []).append(gp)
        if wt > 0:
            acc = sums.setdefault(d, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + lw, acc[1] + wt
    g.loss = {d: s / wt for d, (s, wt) in sums.items()}
    g.grad = {d: sum(ps) for d, ps in prints.items() if NOT_TAKEN not in ps}
    total_w = sum(wt for _, wt in sums.values())
    g.glob = sum(s for s, _ in sums.values()) / max(total_w, 1.0)
    return g
