"""Render a :class:`Plan` as rich tables, or as a JSON-ready dict for scripts and ``--json``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from orchestrator.plan.build import Plan
from orchestrator.plan.layout import LayoutChoice
from orchestrator.plan.units import count, duration, gib, sci


def _kv(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left", expand=False)
    t.add_column("item", style="bold")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, v)
    return t


def _model_table(p: Plan) -> Table:
    s = p.shape
    return _kv("Model and compute budget", [
        ("shape", f"vocab={s.vocab} d_model={s.d_model} layers={s.n_layers} heads={s.n_heads} ffn={s.ffn} "
                  f"seq_len={s.seq_len} ({s.mlp}, {s.norm}, bias={s.bias}, tied_head={s.tied_head})"),
        ("parameters", f"{p.params:,} ({count(p.params)}); non-embedding {count(p.non_embedding_params)}"),
        ("tokens", f"{count(p.tokens)} ({p.tokens_source}); {p.steps:,} steps"),
        ("training FLOPs, 6ND", sci(p.flops["six_nd"])),
        ("training FLOPs, 6ND + attention", f"{sci(p.flops['with_attention'])} (attention 12*layers*d*seq per "
                                            "token, PaLM App. B)"),
        ("Chinchilla-optimal tokens", f"{count(p.chinchilla_tokens)} (20/param); this run {p.chinchilla_ratio:.2f}x"),
    ])


def _time_table(p: Plan) -> Table:
    rows = [("hardware", f"{p.gpus} x {p.gpu.name} ({p.nodes} node(s) of {p.gpus_per_node}); "
                         f"{sci(p.gpu.bf16_dense_flops)} bf16 FLOP/s each"),
            ("MFU", f"{p.mfu:.0%} (assumed: {p.mfu_source})"),
            ("step time", duration(p.step_s)),
            ("failure-free wall time", duration(p.compute_s)),
            ("expected wall time", f"{duration(p.expected_wall_s)} (at goodput {p.reliability.goodput:.1%})"),
            ("GPU-hours", f"{p.gpu_hours:,.1f} failure-free, {p.expected_gpu_hours:,.1f} expected")]
    if p.cost is not None:
        rows.append(("cost", f"{p.cost:,.0f} at {p.price_per_gpu_hour:g} per GPU-hour (expected wall time)"))
    return _kv("Time and cost", rows)


def _memory_table(p: Plan) -> Table:
    cols: list[tuple[str, LayoutChoice]] = [("recommended", p.layout)]
    if p.configured is not None:
        cols.append(("run.yaml layout", p.configured))
    t = Table(title=f"Memory per GPU ({p.gpu.name}, {gib(p.gpu.memory_bytes)})", title_justify="left")
    t.add_column("")
    for name, _ in cols:
        t.add_column(name, justify="right")
    t.add_row("layout", *[_layout_str(c) for _, c in cols])
    for label, attr in (("weights", "weights"), ("gradients", "gradients"), ("optimizer", "optimizer"),
                        ("activations", "activations"), ("activations, full recompute", "activations_recompute"),
                        ("total", "total"), ("total, full recompute", "total_recompute"), ("usable", "usable")):
        t.add_row(label, *[gib(getattr(c.memory, attr)) if c.memory else "-" for _, c in cols])
    t.add_row("fits", *[_fits_str(c) for _, c in cols])
    return t


def _layout_str(c: LayoutChoice) -> str:
    s = c.spec
    if s is None:
        return "none"
    return (f"dp={s.dp} tp={s.tp} pp={s.pp} m={s.microbatches} b={s.micro_batch} sp={s.sp} {s.dp_mode}; "
            f"bubble {c.bubble:.1%}")


def _fits_str(c: LayoutChoice) -> str:
    if not c.fits:
        return "[red]no[/red]"
    return "[yellow]only with full recompute[/yellow]" if c.recompute else "[green]yes[/green]"


def _reliability_table(p: Plan) -> Table:
    r = p.reliability
    rows = [("failure rate", f"{r.failure_rate_per_gpu_hour:.3g} per GPU-hour (default: Llama 3, 419 in 54 days "
                             "on 16,384 GPUs)"),
            ("job MTBF", duration(r.job_mtbf_s)),
            ("expected interruptions", f"{r.expected_interruptions:.3g}"),
            ("checkpoint cost C", f"{duration(r.checkpoint.seconds)} ({r.checkpoint.source})"),
            ("restart cost R", f"{duration(r.restart_s)} (assumed)"),
            ("Young/Daly interval sqrt(2CM)", f"{duration(r.interval_s)} = every {r.interval_steps:,} steps"),
            ("goodput at that interval", f"{r.goodput:.1%} (1 - C/tau - (tau/2 + R)/M)"),
            ("run.yaml checkpoint.every_steps", f"{r.configured_every_steps} -> goodput {r.configured_goodput:.1%}")]
    rows += [("note", n) for n in r.notes]
    return _kv("Failures and checkpoints", rows)


def format_plan(plan: Plan) -> Group:
    """All plan tables plus reasons, warnings and the noise-scale hint, as one rich renderable."""
    parts: list[Any] = [_model_table(plan), _time_table(plan), _memory_table(plan)]
    parts.append(Text("Layout: " + ("recommended" if plan.layout.fits else "CANNOT FIT"), style="bold"))
    parts += [Text(f"  - {r}") for r in plan.layout.reasons]
    parts += [Text(f"  ! {w}", style="yellow") for w in plan.layout.warnings + plan.warnings]
    parts.append(_reliability_table(plan))
    if plan.noise is not None:
        parts.append(Text(f"Critical batch hint (gradient noise scale): {plan.noise.message}"))
    return Group(*parts)


def _clean(x: Any) -> Any:
    """JSON has no inf/nan: map them to None, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _choice_dict(c: LayoutChoice | None) -> dict[str, Any] | None:
    if c is None:
        return None
    mem = dataclasses.asdict(c.memory) if c.memory else None
    if mem is not None and c.memory is not None:
        mem |= {"total": c.memory.total, "total_recompute": c.memory.total_recompute}
    return {"parallel": c.as_parallel(), "micro_batch": c.spec.micro_batch if c.spec else None,
            "fits": c.fits, "recompute": c.recompute, "bubble": c.bubble, "memory_bytes": mem,
            "reasons": c.reasons, "warnings": c.warnings}


def plan_to_dict(p: Plan) -> dict[str, Any]:
    """The plan as plain JSON types (SI units: bytes, seconds, FLOPs)."""
    return _clean({
        "name": p.name, "gpu": dataclasses.asdict(p.gpu), "gpus": p.gpus, "nodes": p.nodes,
        "gpus_per_node": p.gpus_per_node, "shape": dataclasses.asdict(p.shape), "params": p.params,
        "non_embedding_params": p.non_embedding_params, "tokens": p.tokens, "tokens_source": p.tokens_source,
        "flops": p.flops, "chinchilla_tokens": p.chinchilla_tokens, "chinchilla_ratio": p.chinchilla_ratio,
        "mfu": p.mfu, "mfu_source": p.mfu_source, "step_s": p.step_s, "steps": p.steps, "compute_s": p.compute_s,
        "expected_wall_s": p.expected_wall_s, "gpu_hours": p.gpu_hours, "expected_gpu_hours": p.expected_gpu_hours, "price_per_gpu_hour": p.price_per_gpu_hour,
        "cost": p.cost, "layout": _choice_dict(p.layout), "configured_layout": _choice_dict(p.configured),
        "warnings": p.warnings, "reliability": dataclasses.asdict(p.reliability),
        "noise_scale": dataclasses.asdict(p.noise) if p.noise else None,
    })
