"""Choosing a layout: TP inside the NVLink domain, PP until the model fits, DP with the rest.

This is the recipe of Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", sec. 3): use only as much model parallelism as needed to fit, tensor parallelism
first (its all-reduces need NVLink) up to the domain size, then pipeline parallelism across nodes, with at
least 4*pp micro-batches so the 1F1B bubble (p-1)/(m+p-1) stays small; data parallelism takes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from orchestrator.plan.memory import LayoutSpec, MemoryEstimate, estimate_memory
from orchestrator.plan.model_math import ModelShape

MICROBATCHES_PER_STAGE = 4


@dataclass
class LayoutChoice:
    """A layout with its memory and why it was chosen (or why nothing could be)."""

    spec: LayoutSpec | None
    memory: MemoryEstimate | None
    recompute: bool = False
    fits: bool = False
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def bubble(self) -> float:
        return bubble_fraction(self.spec.pp, self.spec.microbatches) if self.spec else 0.0

    def as_parallel(self) -> dict[str, object]:
        """The run.yaml ``parallel`` section for this layout."""
        if self.spec is None:
            return {}
        s = self.spec
        return {"dp": s.dp, "tp": s.tp, "pp": s.pp, "sp": s.sp, "microbatches": s.microbatches,
                "pp_schedule": s.pp_schedule, "dp_mode": s.dp_mode}


@dataclass(frozen=True)
class SearchSpace:
    """What the search may use: GPUs, the TP ceiling, the batch, and the config's schedule and DP mode."""

    world: int
    tp_max: int
    global_batch: int
    precision: str
    capacity: float
    pp_schedule: str = "1f1b"
    dp_mode: str = "ddp"


def bubble_fraction(pp: int, microbatches: int) -> float:
    """Idle share of a pipelined step with GPipe/1F1B: (p-1)/(m+p-1) (Narayanan et al. 2021, sec. 2.2)."""
    return (pp - 1) / (microbatches + pp - 1)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def tp_candidates(shape: ModelShape, space: SearchSpace) -> list[int]:
    """TP degrees that stay inside the NVLink domain and split heads, d_model and the MLP evenly."""
    return [t for t in _divisors(space.world) if t <= space.tp_max and shape.n_heads % t == 0
            and shape.d_model % t == 0 and shape.ffn % t == 0 and shape.n_kv_heads % t == 0]


def microbatch_candidates(per_replica: int, pp: int) -> list[int]:
    """Micro-batch counts dividing the per-replica batch; with pp > 1 only those >= 4*pp (or the most possible)."""
    divs = _divisors(per_replica)
    if pp == 1:
        return divs
    enough = [m for m in divs if m >= MICROBATCHES_PER_STAGE * pp]
    return enough or [per_replica]


def _spec(space: SearchSpace, dp: int, tp: int, pp: int, m: int) -> LayoutSpec:
    return LayoutSpec(dp=dp, tp=tp, pp=pp, microbatches=m, micro_batch=space.global_batch // (dp * m),
                      sp=tp > 1, pp_schedule=space.pp_schedule, dp_mode=space.dp_mode)


def candidates(shape: ModelShape, space: SearchSpace) -> list[LayoutSpec]:
    """Every valid layout, least model parallelism first and, at equal tp*pp, TP before PP."""
    out: list[LayoutSpec] = []
    for tp in tp_candidates(shape, space):
        for pp in _divisors(shape.n_layers):
            if space.world % (tp * pp):
                continue
            dp = space.world // (tp * pp)
            if space.global_batch % dp:
                continue
            for m in microbatch_candidates(space.global_batch // dp, pp):
                out.append(_spec(space, dp, tp, pp, m))
    out.sort(key=lambda s: (s.tp * s.pp, s.pp, s.microbatches))
    return out


def _first_fit(shape: ModelShape, space: SearchSpace, specs: list[LayoutSpec]) -> LayoutChoice | None:
    """The first layout that fits without recompute, else the first that fits with full recompute."""
    evals = [(s, estimate_memory(shape, s, space.precision, space.capacity)) for s in specs]
    for s, mem in evals:
        if mem.fits:
            return LayoutChoice(spec=s, memory=mem, fits=True)
    for s, mem in evals:
        if mem.fits_recompute:
            return LayoutChoice(spec=s, memory=mem, recompute=True, fits=True)
    return None


def recommend_layout(shape: ModelShape, space: SearchSpace) -> LayoutChoice:
    """The recommended layout with reasons; if nothing fits, a choice with ``fits=False`` says why."""
    specs = candidates(shape, space)
    if not specs:
        return LayoutChoice(spec=None, memory=None, reasons=[_no_candidate_reason(shape, space)])
    choice = _first_fit(shape, space, specs)
    if choice is None and space.dp_mode != "fsdp":
        fsdp = replace(space, dp_mode="fsdp")
        choice = _first_fit(shape, fsdp, candidates(shape, fsdp))
        if choice is not None:
            choice.reasons.append(f"dp_mode=fsdp: no layout fits with dp_mode={space.dp_mode}; sharding "
                                  "weights, gradients and optimizer state over DP (ZeRO-3) makes it fit")
    if choice is None:
        return _cannot_fit(shape, space, specs)
    choice.reasons[:0] = explain(shape, space, choice)
    return choice


def _no_candidate_reason(shape: ModelShape, space: SearchSpace) -> str:
    return (f"no layout of {space.world} GPUs is valid: tp must divide n_heads={shape.n_heads}, "
            f"d_model={shape.d_model} and ffn={shape.ffn} and be <= {space.tp_max} (NVLink domain); pp must "
            f"divide n_layers={shape.n_layers}; dp = GPUs/(tp*pp) must divide global_batch={space.global_batch}")


def _cannot_fit(shape: ModelShape, space: SearchSpace, specs: list[LayoutSpec]) -> LayoutChoice:
    """Report the most memory-frugal layout tried and by how much it misses."""
    fsdp = replace(space, dp_mode="fsdp")
    pool = candidates(shape, fsdp) or specs
    evals = [(s, estimate_memory(shape, s, fsdp.precision, fsdp.capacity)) for s in pool]
    spec, mem = min(evals, key=lambda e: e[1].total_recompute)
    gib = 1024**3
    state = (mem.weights + mem.gradients + mem.optimizer) / gib
    reason = (f"does not fit: the smallest footprint found (tp={spec.tp}, pp={spec.pp}, dp={spec.dp}, "
              f"dp_mode=fsdp, full recompute) needs {mem.total_recompute / gib:.1f} GiB per GPU "
              f"({state:.1f} GiB weights+gradients+optimizer, {mem.activations_recompute / gib:.1f} GiB "
              f"activations) but only {mem.usable / gib:.1f} GiB is usable; use more GPUs, a GPU with more "
              f"memory, or a smaller micro-batch/sequence")
    return LayoutChoice(spec=spec, memory=mem, recompute=True, fits=False, reasons=[reason])


def explain(shape: ModelShape, space: SearchSpace, choice: LayoutChoice) -> list[str]:
    """One line per decision, so the layout can be checked by a person rather than trusted."""
    s = choice.spec
    assert s is not None
    out = [f"tp={s.tp}: " + ("no tensor parallelism needed to fit" if s.tp == 1 else
                             f"inside the {space.tp_max}-GPU NVLink domain; divides heads={shape.n_heads} "
                             f"and d_model={shape.d_model}")]
    out.append(f"pp={s.pp}: " + ("the model fits without pipelining" if s.pp == 1 else
                                 f"the fewest stages (dividing n_layers={shape.n_layers}) with which it fits"))
    if s.pp > 1:
        out.append(f"microbatches={s.microbatches} (>= {MICROBATCHES_PER_STAGE}*pp where the batch allows): "
                   f"bubble (p-1)/(m+p-1) = {choice.bubble:.1%}")
        if s.microbatches < MICROBATCHES_PER_STAGE * s.pp:
            choice.warnings.append(f"global_batch={space.global_batch} gives only {s.microbatches} micro-batches "
                                   f"per replica (< {MICROBATCHES_PER_STAGE}*pp): {choice.bubble:.0%} of each "
                                   "step is pipeline bubble; raise train.global_batch")
    else:
        out.append(f"microbatches={s.microbatches}: " + ("no gradient accumulation needed" if s.microbatches == 1
                                                          else "gradient accumulation to fit activations"))
    out.append(f"dp={s.dp}: the remaining GPUs; micro-batch {s.micro_batch} sample(s) per GPU")
    if s.sp:
        out.append("sp=true: sequence parallelism divides the remaining activations by tp (Korthikanti 2022)")
    if choice.recompute:
        out.append("full activation recompute needed: stored activations do not fit (about +33% compute)")
    return out


def hardware_warnings(shape: ModelShape, spec: LayoutSpec | None) -> list[str]:
    """Shapes that waste tensor cores: NVIDIA's matmul guide asks 16-bit dims to be multiples of 8 (64 best)."""
    tp = spec.tp if spec else 1
    out = []
    if shape.vocab % (64 * tp):
        pad = -(-shape.vocab // (64 * tp)) * 64 * tp
        out.append(f"vocab_size={shape.vocab} is not divisible by {64 * tp} (64*tp); pad it to {pad} for "
                   "efficient embedding and logits matmuls")
    dims = {"d_model/tp": shape.d_model // tp, "ffn/tp": shape.ffn // tp, "head_dim": shape.head_dim}
    for name, v in dims.items():
        if v % 8:
            out.append(f"{name}={v} is not a multiple of 8: tensor cores need 16-bit dims in multiples of 8")
        elif v % 64 and name != "head_dim":
            out.append(f"{name}={v} is not a multiple of 64: matmuls run faster with multiples of 64")
    if spec is not None and (spec.micro_batch * shape.seq_len) % 8:
        out.append(f"micro_batch*seq_len={spec.micro_batch * shape.seq_len} is not a multiple of 8")
    return out
