"""Memory per GPU for one layout: weights, gradients, optimizer state and activations.

Model state follows ZeRO (Rajbhandari et al. 2020, sec. 3.1): under bf16/fp16 mixed precision with Adam a
parameter costs 2 (16-bit weight) + 2 (16-bit gradient) + 12 (fp32 master, first and second moment) bytes;
in plain fp32, 4 + 4 + 8. ``dp_mode: fsdp`` shards all three over DP (ZeRO-3); ddp/replicate keep full copies.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
per layer and micro-batch, in bytes with 16-bit activations (s seq, b micro-batch, h d_model, a heads, t TP):

* no TP:            s*b*h*(34 + 5*a*s/h)
* TP, no SP:        s*b*h*(10 + 24/t + 5*a*s/(h*t))
* TP with SP:       s*b*h*(34 + 5*a*s/h) / t
* full recompute:   2*s*b*h per layer (only the layer input is kept; /t with SP), plus one layer's
                    full activations while it is recomputed.

The 5*a*s/h term is the attention score matrix; fused (flash) attention does not store it, so these figures
are conservative for such kernels. The formula assumes a 4*h MLP; other widths shift the constant a little.
fp32 activations double everything. The last stage also holds the fp32 logits, 4*s*b*V/t bytes.
With 1F1B the first stage keeps min(m, p) micro-batches in flight (so about L layers' worth), GPipe keeps m.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.plan.model_math import ModelShape, stage_params

USABLE_FRACTION = 0.9
"""Share of the datasheet memory a run can plan on; the rest is CUDA context, NCCL buffers, fragmentation."""


@dataclass(frozen=True)
class LayoutSpec:
    """The parallel layout that memory depends on (``b`` is the micro-batch size in samples)."""

    dp: int
    tp: int
    pp: int
    microbatches: int
    micro_batch: int
    sp: bool = False
    pp_schedule: str = "1f1b"
    dp_mode: str = "ddp"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU on the busiest pipeline stage, with and without full activation recompute."""

    params_per_gpu: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    activations_recompute: float
    capacity: float
    usable: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def total_recompute(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations_recompute

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    @property
    def fits_recompute(self) -> bool:
        return self.total_recompute <= self.usable


def state_bytes_per_param(precision: str) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per parameter for Adam under the given precision."""
    if precision in ("bf16", "fp16"):
        return 2.0, 2.0, 12.0
    return 4.0, 4.0, 8.0


def layer_activation_bytes(shape: ModelShape, lay: LayoutSpec) -> float:
    """Korthikanti et al. 2022 per-layer activation bytes for one micro-batch (16-bit activations)."""
    s, b, h, a, t = shape.seq_len, lay.micro_batch, shape.d_model, shape.n_heads, lay.tp
    sbh = s * b * h
    if t == 1:
        return sbh * (34 + 5 * a * s / h)
    if lay.sp:
        return sbh * (34 + 5 * a * s / h) / t
    return sbh * (10 + 24 / t + 5 * a * s / (h * t))


def _in_flight(lay: LayoutSpec, stage: int) -> int:
    """Micro-batches whose activations a stage holds at its peak."""
    if lay.pp == 1:
        return 1
    if lay.pp_schedule == "gpipe":
        return lay.microbatches
    return min(lay.microbatches, lay.pp - stage)


def _stage_activations(shape: ModelShape, lay: LayoutSpec, stage: int, precision: str) -> tuple[float, float]:
    """(stored activations, stored activations under full recompute) of one stage, in bytes."""
    scale = 2.0 if precision == "fp32" else 1.0
    layers = shape.n_layers // lay.pp
    flight = _in_flight(lay, stage)
    per_layer = layer_activation_bytes(shape, lay)
    full = per_layer * layers * flight
    ckpt_in = 2 * shape.seq_len * lay.micro_batch * shape.d_model / (lay.tp if lay.sp else 1)
    recompute = ckpt_in * layers * flight + per_layer
    if stage == lay.pp - 1:
        logits = 4.0 * shape.seq_len * lay.micro_batch * shape.vocab / lay.tp
        full, recompute = full + logits, recompute + logits
    return full * scale, recompute * scale


def estimate_memory(shape: ModelShape, lay: LayoutSpec, precision: str, capacity: float) -> MemoryEstimate:
    """Memory on the busiest stage (the max over the first and last stages, which hold the embeddings)."""
    w_b, g_b, o_b = state_bytes_per_param(precision)
    shard = lay.dp if lay.dp_mode == "fsdp" else 1
    best: MemoryEstimate | None = None
    for stage in sorted({0, lay.pp - 1}):
        n = stage_params(shape, lay.pp, stage) // lay.tp
        act, act_rc = _stage_activations(shape, lay, stage, precision)
        est = MemoryEstimate(params_per_gpu=n, weights=n * w_b / shard, gradients=n * g_b / shard,
                             optimizer=n * o_b / shard, activations=act, activations_recompute=act_rc,
                             capacity=capacity, usable=capacity * USABLE_FRACTION)
        if best is None or est.total > best.total:
            best = est
    assert best is not None
    return best
