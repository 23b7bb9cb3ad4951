"""A critical-batch-size hint from the gradient noise scale of a previous run (McCandlish et al. 2018).

The simple noise scale is B_simple = tr(Sigma) / |G|^2 (true gradient G, per-sample covariance Sigma). A
minibatch gradient of B samples satisfies E|g_B|^2 = |G|^2 + tr(Sigma)/B, so with the squared norm measured
at two batch sizes B_s < B_b the two unknowns separate (McCandlish et al. 2018, Appendix A.1):

    |G|^2    ~ (B_b*|g_b|^2 - B_s*|g_s|^2) / (B_b - B_s)
    tr(Sigma) ~ (|g_s|^2 - |g_b|^2) / (1/B_s - 1/B_b)

Each is averaged over many steps before the ratio is taken (the ratio of means, not the mean of ratios).

Limits, stated plainly: with one batch size only (the usual metrics.jsonl: one global ``grad_norm`` per step)
the two terms cannot be told apart, and no estimate is made. Two sizes come from (a) steps at different batch
sizes (a ``batch`` field per line, or tokens_per_s*step_time/seq_len), or (b) an optional per-line
``grad_norm_local`` (root-mean-square over DP ranks of each rank's gradient norm before the all-reduce) with
``local_batch``. ``grad_norm`` must be the norm before clipping. The estimate uses the second half of the
run, as the noise scale grows during training; groups taken at different times mix that drift into the
result. B_simple tracks the critical batch size only up to the Hessian's conditioning (within about an order
of magnitude in the paper's experiments), and ignores Adam's preconditioning. Treat it as a hint.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

MIN_STEPS_PER_SIZE = 10


@dataclass(frozen=True)
class NoiseScale:
    """The estimate (or why there is none) and what it suggests for the global batch."""

    b_simple: float | None
    message: str
    steps_used: int = 0
    batch_sizes: tuple[int, int] | None = None


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.jsonl rows that carry a finite grad_norm and were applied; the latest line per step wins."""
    rows: dict[int, dict[str, float]] = {}
    if not path.exists():
        return []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or rec.get("skipped") or not isinstance(rec.get("step"), int):
            continue
        g = rec.get("grad_norm")
        if isinstance(g, int | float) and math.isfinite(g):
            rows[rec["step"]] = rec
    return [rows[k] for k in sorted(rows)]


def _batch_of(row: dict[str, float], seq_len: int, default: int) -> int:
    if isinstance(row.get("batch"), int | float) and row["batch"] > 0:
        return int(row["batch"])
    tps, st = row.get("tokens_per_s"), row.get("step_time")
    if isinstance(tps, int | float) and isinstance(st, int | float) and tps > 0 and st > 0:
        return max(1, round(tps * st / seq_len))
    return default


def two_size_estimate(small: tuple[int, float], big: tuple[int, float]) -> float | None:
    """B_simple from (batch, mean |g|^2) at two sizes; None when |G|^2 or tr(Sigma) comes out non-positive."""
    (bs, gs), (bb, gb) = small, big
    g2 = (bb * gb - bs * gs) / (bb - bs)
    tr = (gs - gb) / (1.0 / bs - 1.0 / bb)
    if g2 <= 0 or tr <= 0:
        return None
    return tr / g2


def _groups(rows: list[dict[str, float]], seq_len: int, default_batch: int) -> dict[int, list[float]]:
    """Mean-able squared norms keyed by batch size, from both the global and (if present) local norms."""
    groups: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        groups[_batch_of(r, seq_len, default_batch)].append(float(r["grad_norm"]) ** 2)
        loc, lb = r.get("grad_norm_local"), r.get("local_batch")
        if isinstance(loc, int | float) and isinstance(lb, int | float) and lb > 0 and math.isfinite(loc):
            groups[int(lb)].append(float(loc) ** 2)
    return groups


def estimate_noise_scale(run_dir: Path, seq_len: int, global_batch: int) -> NoiseScale:
    """B_simple from RUN_DIR/metrics.jsonl, or a message saying what is missing."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    if len(rows) < 2 * MIN_STEPS_PER_SIZE:
        return NoiseScale(None, f"not enough telemetry: {len(rows)} usable step(s) in {run_dir}/metrics.jsonl, "
                          f"need at least {2 * MIN_STEPS_PER_SIZE}")
    late = rows[len(rows) // 2:]
    groups = {b: v for b, v in _groups(late, seq_len, global_batch).items() if len(v) >= MIN_STEPS_PER_SIZE}
    if len(groups) < 2:
        return NoiseScale(None, "not enough telemetry: grad_norm is measured at a single batch size, which cannot "
                          "separate |G|^2 from tr(Sigma)/B; add grad_norm_local/local_batch to metrics or run a "
                          "short probe at another global batch", steps_used=len(late))
    (bs, vs), (bb, vb) = sorted(sorted(groups.items(), key=lambda kv: -len(kv[1]))[:2])
    est = two_size_estimate((bs, sum(vs) / len(vs)), (bb, sum(vb) / len(vb)))
    if est is None:
        return NoiseScale(None, f"estimate not usable: at batch sizes {bs} and {bb} the gradient noise swamps the "
                          "signal (|G|^2 or tr(Sigma) came out <= 0); more steps are needed", len(late), (bs, bb))
    return NoiseScale(est, _advice(est, global_batch), len(late), (bs, bb))


def _advice(b_simple: float, global_batch: int) -> str:
    ratio = global_batch / b_simple
    if ratio > 2:
        hint = "the global batch is well above it: extra samples per step buy little; a smaller batch is as good"
    elif ratio < 0.5:
        hint = "the global batch is well below it: a larger batch should scale almost perfectly (fewer steps)"
    else:
        hint = "the global batch is near it: a good compute/time trade-off"
    return f"B_simple ~ {b_simple:.3g} samples vs global_batch={global_batch}: {hint}"
