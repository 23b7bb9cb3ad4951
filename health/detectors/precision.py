"""Precision audit of a checkpoint's tensors.

Under mixed precision (bf16/fp16 compute) the master weights and the optimizer state must stay in
fp32: bf16 has 8 bits of mantissa, so updates smaller than 1/256 of a weight are rounded away and
training stalls silently. And a run whose checkpoints change precision between saves was resumed with
a different config, which changes the numerics of the run: that is a fault worth recording, not noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]

_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32", "torch.float": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16", "torch.half": "fp16",
    "fp64": "fp64", "float64": "fp64", "double": "fp64", "torch.float64": "fp64", "torch.double": "fp64",
    "fp8": "fp8", "torch.float8_e4m3fn": "fp8", "torch.float8_e5m2": "fp8",
    "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
}
_OPTIM_MARKERS = ("exp_avg", "exp_avg_sq", "momentum_buffer", "max_exp_avg_sq", "square_avg")


@dataclass(frozen=True)
class PrecisionFinding:
    kind: Literal["low_precision_master", "low_precision_optimizer_state", "unexpected_dtype",
                  "precision_changed"]
    tensor: str | None
    dtype: str | None
    detail: str


def normalise_dtype(dtype: str) -> str | None:
    """'torch.bfloat16' -> 'bf16'; None for non-float dtypes (step counters, token ids)."""
    return _ALIASES.get(dtype.strip().lower())


def _is_optimizer_state(name: str) -> bool:
    low = name.lower()
    return low.startswith(("optim", "optimizer")) or any(m in low for m in _OPTIM_MARKERS)


def audit_precision(tensor_dtypes: Mapping[str, str], expected: Precision,
                    previous: str | None) -> list[PrecisionFinding]:
    """Findings for one checkpoint: tensor name -> dtype string, the run's ``train.precision``, and the
    precision recorded with the previous checkpoint (None for the first one)."""
    out: list[PrecisionFinding] = []
    if previous is not None and previous != expected:
        out.append(PrecisionFinding("precision_changed", None, None,
                                    f"previous checkpoint was {previous}, this one is {expected}: "
                                    "the run was resumed with a different train.precision"))
    for name in sorted(tensor_dtypes):
        raw = tensor_dtypes[name]
        dt = normalise_dtype(raw)
        if dt is None or dt in ("fp32", "fp64"):
            continue  # integer state, or at least fp32: nothing lost
        optim = _is_optimizer_state(name)
        if expected == "fp32":
            out.append(PrecisionFinding("unexpected_dtype", name, raw,
                                        f"{name} is {dt} in an fp32 run"))
        elif optim:
            out.append(PrecisionFinding("low_precision_optimizer_state", name, raw,
                                        f"optimizer state {name} is {dt}; under {expected} mixed "
                                        "precision it must stay fp32"))
        else:
            out.append(PrecisionFinding("low_precision_master", name, raw,
                                        f"master weight {name} is {dt}; under {expected} mixed "
                                        "precision the saved weights must be fp32"))
    return out
