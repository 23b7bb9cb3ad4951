"""Replaying a step the in-step guard flagged, before acting on it: the data, a node, or the model?

Every rank runs the same replays in lockstep (they are collectives), gathers the per-replica losses with
one small all-gather each, and applies the same pure rules (``health.detectors.replay_rules``), so all
ranks reach the same verdict without another agreement. What each verdict does:

- ``transient``: the replay on the same ranks was clean; its gradients are applied (the loop does it).
- ``data``: the batch is bad wherever it is computed; the step is skipped and its samples skip-listed.
- ``dynamics``: the weights are bad on neighbouring batches too; the step is not applied, its batch is not
  blamed, and the loop's rollback policy (``max_consecutive_bad``) acts if it persists.
- ``hardware``: only one node's computations are wrong; nothing is applied, rank 0 reports the node and
  every rank waits for the supervisor to fence this attempt (it excludes the node, relaunches on a spare
  from the last checkpoint; no update computed on that node after the fault is ever applied).

Replays are bounded per run (``policy.replay.max_replays`` and ``max_seconds``, kept in
``RUN_DIR/replay_budget.json`` across attempts); past the bound a flagged step is skipped as before.
Not replayed: fp16 runs (the loss scaler's state would move with each replay).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from health.detectors.loss_rules import LossVerdict, SpikeParams, judge_step
from health.detectors.replay_rules import Computation, ReplayVerdict, agree, decide, first_diverging_stage
from spec.config import RunConfig
from trainer.chaos import Chaos
from trainer.data import Corpus, Sampler, shard
from trainer.fence import EpochGuard
from trainer.replay_gather import NOT_TAKEN, Gathered, GradPrint, StagePrint, gather
from trainer.telemetry import Telemetry

BUDGET_FILE = "replay_budget.json"


@dataclass(frozen=True)
class Review:
    """What the loop does with a flagged step after its replay."""

    verdict: str
    applied: bool  # transient: the engine holds the replay's clean gradients; apply them
    skip_batch: bool  # data: put the batch on the skip list
    loss: float  # the global loss the applied step reports (transient)
    grad_norm: float
    seconds: float  # replay time: its own category in the goodput ledger


@dataclass
class Budget:
    """Replays used by this run so far (all attempts); rank 0 persists it after each replay."""

    count: int = 0
    seconds: float = 0.0
    path: Path | None = None

    @classmethod
    def load(cls, run_dir: Path | None) -> Budget:
        path = run_dir / BUDGET_FILE if run_dir is not None else None
        try:
            d = json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            d = {}
        return cls(int(d.get("count", 0)), float(d.get("seconds", 0.0)), path)

    def spend(self, seconds: float, persist: bool) -> None:
        self.count, self.seconds = self.count + 1, self.seconds + seconds
        if persist and self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"count": self.count, "seconds": round(self.seconds, 4)}))
            os.replace(tmp, self.path)


def _worth_showing(v: ReplayVerdict, orig: dict[int, float], same: dict[int, float], n: int = 8) -> set[int]:
    """The suspects, and the replicas with the highest losses (a non-finite one first), at most ``n``+."""
    def key(d: int) -> float:
        x = same.get(d, orig.get(d, 0.0))
        return float("inf") if x != x or abs(x) == float("inf") else x
    ranked = sorted(set(orig) | set(same), key=key, reverse=True)
    return set(v.suspects) | set(ranked[:n])


def suspect_ranks(v: ReplayVerdict, orig: Gathered, same: Gathered, rel_tol: float) -> list[int]:
    """transient: the ranks whose own first loss differs from their replay, within the replica counted
    against (a NaN from one rank names that rank and its node, not every node of its replica). When no
    replica's loss changed (the rank computes no loss of its replica: an early pipeline stage, whose NaN
    was in its gradients) the changed ranks say it alone; when every replica changed (a corrupted read),
    no rank is named."""
    if v.verdict != "transient":
        return []
    changed = [r for r in sorted(same.rank_loss) if r in orig.rank_loss
               and not agree(orig.rank_loss[r], same.rank_loss[r], rel_tol)]
    if v.suspects:
        return [r for r in changed if same.rank_replica[r] in v.suspects]
    replicas_changed = [d for d in orig.loss if d in same.loss and not agree(orig.loss[d], same.loss[d], rel_tol)]
    return [] if replicas_changed else changed


def narrow(v: ReplayVerdict, same: Gathered, cross: Gathered | None, rel_tol: float) -> list[int] | None:
    """hardware: the ranks of the first pipeline stage whose output differs between the two computations
    of each mismatched batch, on the blamed side (a replica spanning nodes then names the stage's node,
    not all of them); None when a mismatch cannot be narrowed (the whole replica stays suspect)."""
    if v.verdict != "hardware" or cross is None:
        return None
    ranks: set[int] = set()
    for c in v.mismatches:
        s = first_diverging_stage(same.stages.get(c.batch, {}), cross.stages.get(c.computer, {}), rel_tol)
        if s is None:
            return None
        if c.batch in v.suspects:
            ranks |= same.stage_ranks.get((c.batch, s), set())
        if c.computer in v.suspects:
            ranks |= cross.stage_ranks.get((c.computer, s), set())
    return sorted(ranks) or None


def stage_ids(engine: Any, cfg: RunConfig) -> list[int]:
    """The pipeline stages of this rank's parts (one stage, 0, without pipelining)."""
    mesh = getattr(engine, "mesh", None)
    if mesh is None or cfg.parallel.pp == 1:
        return [0]
    from trainer.parallel import pipeline
    per = pipeline.stages_per_rank(cfg.parallel.pp_schedule, cfg.parallel.pp)
    return pipeline.stage_ids(mesh["pp"].get_local_rank(), cfg.parallel.pp, per)


def model_parts(engine: Any) -> list[nn.Module]:
    """The model modules this rank holds (one, or a pipeline rank's stages)."""
    return list(getattr(engine, "parts", None) or [engine.module])


class Replayer:
    def __init__(self, cfg: RunConfig, engine: Any, corpus: Corpus, chaos: Chaos, tel: Telemetry,
                 rank: int, guard: EpochGuard, run_dir: Path | None = None) -> None:
        self.cfg, self.engine, self.corpus, self.chaos, self.tel = cfg, engine, corpus, chaos, tel
        self.rank, self.guard = rank, guard
        self.rc = cfg.policy.replay
        self.enabled = self.rc.enabled and cfg.train.precision != "fp16"
        self.node_index = rank // cfg.cluster.ranks_per_node
        if run_dir is None and os.environ.get("ORCH_RUN_DIR"):
            run_dir = Path(os.environ["ORCH_RUN_DIR"])
        self.budget = Budget.load(run_dir)
        chaos.install_sdc(model_parts(engine))
        self.prints = GradPrint(model_parts(engine))  # after the chaos hooks: sees what the node computed
        self.stage_prints = StagePrint(model_parts(engine), stage_ids(engine, cfg))

    # ---- data ---------------------------------------------------------------------------------
    def batch(self, step: int, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the step's batch (the loop's data, with data and weight chaos applied)."""
        self.chaos.diverge(step, model_parts(self.engine))
        return self._shard(step, idx, self.engine.dp_rank)

    def _shard(self, step: int, idx: list[int], replica: int) -> tuple[torch.Tensor, torch.Tensor]:
        mine = shard(idx, replica, self.engine.dp_size)
        x, y = self.corpus.batch(mine)
        return self.chaos.poison_data(step, idx, mine, x, y)

    # ---- collectives ----------------------------------------------------------------------------
    def _gather(self, loss: float, grad: float = NOT_TAKEN, flag: float = 0.0,
                stages: list[float] | None = None) -> Gathered:
        return gather(self.engine, self.rank, self.node_index, loss, grad, flag, stages)

    def _compute(self, step: int, idx: list[int], replica: int) -> Gathered:
        """Forward and backward of ``replica``'s share of the batch (a collective over the whole world),
        gathered: every rank's loss, local gradient fingerprint and stage output prints."""
        self.prints.start()
        self.stage_prints.start()
        loss = float(self.engine.forward_backward(*self._shard(step, idx, replica)))
        return self._gather(loss, self.prints.take(), stages=self.stage_prints.take())

    # ---- the review -----------------------------------------------------------------------------
    def review(self, step: int, idx: list[int], local_loss: float, flagged: LossVerdict,
               sampler: Sampler, history: list[float], spike: SpikeParams, t_start: float) -> Review | None:
        """Replay the flagged step; None when replays are off or this run's budget is spent (the
        caller then skips the step as before). Never returns on a ``hardware`` verdict."""
        if not self.enabled:
            return None
        over = self.budget.count >= self.rc.max_replays or self.budget.seconds >= self.rc.max_seconds
        t0 = time.perf_counter()
        orig = self._gather(local_loss, flag=1.0 if over else 0.0)
        if orig.flagged:
            return None
        prev, self.tel.phase = self.tel.phase, "replay"
        try:
            same = self._compute(step, idx, self.engine.dp_rank)
            gn = self.engine.clip_grad_norm(self.cfg.train.grad_clip)
            same_bad = judge_step(same.glob, gn, history, spike).bad
            cross, got, neighbours = (self._elsewhere(step, idx, sampler, history, spike) if same_bad
                                      else ([], None, []))
        finally:
            self.tel.phase = prev
        v = decide(same_bad, orig.loss, same.loss, cross, neighbours, self.rc.rel_tol, same.grad)
        secs = time.perf_counter() - t0
        self.budget.spend(secs, persist=self.rank == 0)
        narrowed = narrow(v, same, got, self.rc.rel_tol)
        self._report(step, idx, flagged, v, orig, same, cross, neighbours, secs, t_start, narrowed)
        if v.verdict == "hardware":
            self._halt()
        return Review(v.verdict, v.verdict == "transient", v.verdict == "data", same.glob, gn, secs)

    def _elsewhere(self, step: int, idx: list[int], sampler: Sampler, history: list[float],
                   spike: SpikeParams) -> tuple[list[Computation], Gathered | None, list[bool]]:
        """The batch on another replica (replica d computes replica d+1's), then the same weights on the
        following batches (forward only)."""
        dp = self.engine.dp_size
        cross: list[Computation] = []
        got = None
        if dp > 1:
            got = self._compute(step, idx, (self.engine.dp_rank + 1) % dp)
            cross = [Computation((d + 1) % dp, d, loss, got.grad.get(d)) for d, loss in sorted(got.loss.items())]
        self.engine.discard()
        ahead = Sampler.from_state(sampler.state())
        bad: list[bool] = []
        for _ in range(self.rc.neighbour_batches):
            nxt = ahead.next_global_batch(self.cfg.train.global_batch)
            x, y = self._shard(step, nxt, self.engine.dp_rank)
            bad.append(judge_step(self._gather(self.engine.eval_loss(x, y)).glob, None, history, spike).bad)
        return cross, got, bad

    def _report(self, step: int, idx: list[int], flagged: LossVerdict, v: ReplayVerdict, orig: Gathered,
                same: Gathered, cross: list[Computation], neighbours: list[bool], secs: float,
                t_start: float, narrowed: list[int] | None) -> None:
        """Rank 0 sends the evidence; the supervisor journals it and acts (orchestrator.replay_events)."""
        if self.rank != 0:
            return
        ranks = narrowed or suspect_ranks(v, orig, same, self.rc.rel_tol)
        suspect_nodes = (sorted({same.rank_node[r] for r in ranks}) if ranks
                         else sorted({n for d in v.suspects for n in same.nodes.get(d, set())}))
        keep = _worth_showing(v, orig.loss, same.loss)  # a datagram holds 8 KiB: the replicas that tell the story
        self.tel.event("replay", step=step, verdict=v.verdict, reason=v.reason[:600], rule=flagged.rule,
                       detail=flagged.detail, samples=list(idx)[:64], suspects=list(v.suspects)[:16],
                       suspect_ranks=ranks[:16], suspect_node_indices=suspect_nodes[:16], replay_s=round(secs, 4),
                       t_start=t_start, replica_nodes={str(d): sorted(same.nodes[d])[:4] for d in keep
                                                       if d in same.nodes},
                       first={str(d): orig.loss[d] for d in keep if d in orig.loss},
                       same={str(d): same.loss[d] for d in keep if d in same.loss},
                       same_grad={str(d): same.grad[d] for d in keep if d in same.grad},
                       cross=[{"batch": c.batch, "computer": c.computer, "loss": c.loss, "grad": c.grad}
                              for c in cross if c.batch in keep or c.computer in keep],
                       neighbours_bad=neighbours, used={"count": self.budget.count,
                                                        "seconds": round(self.budget.seconds, 3)})

    def _halt(self) -> None:
        """hardware: apply nothing more; wait for the supervisor to fence this attempt (then exit)."""
        self.engine.discard()
        self.tel.phase = "replay_halt"
        while True:
            self.guard.check()  # raises Fenced once the supervisor moved on
            time.sleep(0.05)
