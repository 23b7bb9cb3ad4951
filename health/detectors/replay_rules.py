"""Is it the data, the hardware, or the model? The verdict on a flagged step from its replays.

Pure: the trainer (``trainer.replay``) runs the replays and hands the numbers here; the same inputs
always give the same verdict, on every rank, with no collective needed to agree on it.

The replays, in order:

1. **same** — every data-parallel replica recomputes its own batch with the same weights. If the step is
   no longer bad, the fault did not reproduce: ``transient`` (the clean result is applied; the replica
   whose first loss differs from its replay is the one the event counts against).
2. **cross** — replica ``d`` computes the batch of replica ``d+1`` (in hybrid layouts every rank takes
   the role of the rank with the same tp/pp coordinates in the next replica, which holds the same state
   shard). Two computations of one batch on different nodes must agree (within ``rel_tol``: the kernels
   are deterministic). A batch whose two results disagree points at hardware; of the two, the higher
   loss (a non-finite one counts as infinite) is the corrupted one, and its computer is a suspect.
   When the losses agree, the two computations' local gradient fingerprints (norm² of the rank's own
   gradients before any reduction, ``trainer.replay_gather``) must agree too, with the same rule: a
   fault in the backward pass alone leaves the loss right. Suspects found: ``hardware``.
3. **neighbours** — everything reproduced wherever it was computed, so the result is a property of the
   batch *or* of the weights. The rule that tells them apart: evaluate the same weights on the next
   ``neighbour_batches`` batches. None of them bad → the batch is at fault: ``data`` (skip it, record its
   samples). All of them bad → the weights are: ``dynamics`` (continue, alert; the rollback policy acts if
   it persists). Some bad, some not → ``data`` (a bad region of the data set; skipping is the cheap,
   reversible choice, and a persistent problem still reaches the rollback policy).

A replica spanning several nodes (pipeline stages on different nodes) is narrowed to the ranks of the
first stage whose output differs between the two computations of a mismatched batch
(``first_diverging_stage``). Tensor-parallel ranks of one stage are not told apart: their partial results
are summed by an all-reduce inside the stage, so every one of them outputs the same (spoiled) tensor;
the mesh keeps tp innermost, so a stage's tp ranks share a node whenever ranks_per_node is a multiple
of tp, and the stage names one node.

With one replica (dp = 1) step 2 cannot run (a spare's agent would be needed; not done): hardware is not
ruled out, and the reason says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

VERDICTS = ("data", "transient", "hardware", "dynamics")


@dataclass(frozen=True)
class Computation:
    """One replica's loss on one replica's batch (``batch`` names the replica that owns the batch)."""

    batch: int
    computer: int
    loss: float
    grad: float | None = None  # the computer's local gradient fingerprint (None: not taken)


@dataclass(frozen=True)
class ReplayVerdict:
    verdict: str  # one of VERDICTS
    suspects: tuple[int, ...]  # replicas blamed (hardware) or counted against (transient)
    reason: str
    mismatches: tuple[Computation, ...] = field(default_factory=tuple)


def _key(x: float) -> float:
    return math.inf if not math.isfinite(x) else x


def agree(a: float, b: float, rel_tol: float) -> bool:
    """Two computations of one batch agree: both non-finite, or equal within ``rel_tol``."""
    if not math.isfinite(a) or not math.isfinite(b):
        return not math.isfinite(a) and not math.isfinite(b)
    return abs(a - b) <= rel_tol * max(abs(a), abs(b), 1e-12)


def _transient(orig: Mapping[int, float], same: Mapping[int, float], rel_tol: float) -> ReplayVerdict:
    """Not reproduced. The event counts against the replica whose first result changed most on replay,
    unless every one of several replicas changed: then the input was bad for all of them at once (a
    corrupted read of the batch), which no one node explains, and no node is counted against."""
    differ = [d for d in sorted(orig) if d in same and not agree(orig[d], same[d], rel_tol)]
    if len(orig) > 1 and len(differ) == len(orig):
        return ReplayVerdict("transient", (), "recomputed with the same weights on the same ranks, the step "
                                              "was clean; every replica's first result differs from its "
                                              "replay: the input was bad once for all (a corrupted read), "
                                              "not a node")
    worst = max(differ, key=lambda d: _key(orig[d]) - _key(same[d]), default=None)
    return ReplayVerdict("transient", () if worst is None else (worst,),
                         "recomputed with the same weights on the same ranks, the step was clean"
                         + (f"; replica {worst}'s first result differs from its replay" if worst is not None
                            else "; every replica's loss matched its replay (a gradient-only fault)"))


def _diverged(c: Computation, same: Mapping[int, float], same_grad: Mapping[int, float],
              rel_tol: float) -> tuple[str, float, float] | None:
    """(what, own replica's value, this computation's value) of the first quantity that disagrees: the
    loss, else the gradient fingerprint (when both sides took one); None when the two agree."""
    if not agree(c.loss, same[c.batch], rel_tol):
        return "loss", same[c.batch], c.loss
    if c.grad is not None and c.batch in same_grad and not agree(c.grad, same_grad[c.batch], rel_tol):
        return "gradient norm²", same_grad[c.batch], c.grad
    return None


def _hardware(same: Mapping[int, float], same_grad: Mapping[int, float], cross: Sequence[Computation],
              rel_tol: float) -> ReplayVerdict | None:
    found = [(c, v) for c in cross if c.batch in same and (v := _diverged(c, same, same_grad, rel_tol))]
    if not found:
        return None
    suspects = sorted({c.batch if _key(own) > _key(other) else c.computer for c, (_, own, other) in found})
    pairs = "; ".join(f"batch of replica {c.batch}: {what} {own:.4g} on its own replica, {other:.4g} on "
                      f"replica {c.computer}" for c, (what, own, other) in found)
    return ReplayVerdict("hardware", tuple(suspects),
                         f"the bad result follows replica(s) {suspects}, not the batch ({pairs})",
                         tuple(c for c, _ in found))


def first_diverging_stage(own: Mapping[int, float], other: Mapping[int, float], rel_tol: float) -> int | None:
    """stage → output fingerprint of two computations of one batch: the first stage, in pipeline order,
    whose outputs disagree. Its input (the previous stage's output) agreed, so the fault is in that
    stage's computation, on the ranks that hold it. None: no stage disagrees (a gradient-only fault),
    or the stages are not known on both sides."""
    common = sorted(set(own) & set(other))
    if not common or len(common) != len(own) or len(common) != len(other):
        return None
    return next((s for s in common if not agree(own[s], other[s], rel_tol)), None)


def decide(same_bad: bool, orig: Mapping[int, float], same: Mapping[int, float],
           cross: Sequence[Computation], neighbours_bad: Sequence[bool], rel_tol: float,
           same_grad: Mapping[int, float] | None = None) -> ReplayVerdict:
    """The verdict from the replays (see the module docstring for the rules and why)."""
    if not same_bad:
        return _transient(orig, same, rel_tol)
    hw = _hardware(same, same_grad or {}, cross, rel_tol)
    if hw is not None:
        return hw
    where = ("reproduced on the same ranks and on another replica" if cross
             else "reproduced on the same ranks (one replica: hardware not ruled out, no other node asked)")
    n_bad = sum(bool(b) for b in neighbours_bad)
    if neighbours_bad and n_bad == len(neighbours_bad):
        return ReplayVerdict("dynamics", (), f"{where}; the same weights are bad on all {n_bad} following "
                                             "batches too: the model, not the data")
    return ReplayVerdict("data", (), f"{where}; the same weights are fine on {len(neighbours_bad) - n_bad} of "
                                     f"{len(neighbours_bad)} following batches: the batch is at fault")
