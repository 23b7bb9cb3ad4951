"""Memory per GPU and layout choice: the recipe's decisions, the cannot-fit report, config validity."""

from __future__ import annotations

import copy

import pytest

from spec.config import ModelConfig
from orchestrator.config_load import load_config_data
from orchestrator.plan import build_plan
from orchestrator.plan.layout import SearchSpace, bubble_fraction, hardware_warnings, recommend_layout
from orchestrator.plan.memory import LayoutSpec, estimate_memory, layer_activation_bytes
from orchestrator.plan.model_math import shape_from_config

GIB = 1024**3
GPT3_CFG = {"model": {"vocab_size": 50257, "d_model": 12288, "n_layers": 96, "n_heads": 96, "seq_len": 2048},
            "train": {"global_batch": 1536, "precision": "bf16", "steps": 1000},
            "checkpoint": {"every_steps": 100}}
GPT7B_CFG = {"model": {"vocab_size": 50304, "d_model": 4096, "n_layers": 32, "n_heads": 32, "seq_len": 2048},
             "train": {"global_batch": 512, "precision": "bf16", "steps": 1000},
             "checkpoint": {"every_steps": 100}}


def _spec(**kw: object) -> LayoutSpec:
    base = {"dp": 1, "tp": 1, "pp": 1, "microbatches": 1, "micro_batch": 1}
    return LayoutSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_bubble_fraction() -> None:
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(4, 16) == pytest.approx(3 / 19)


def test_korthikanti_activation_formula() -> None:
    shape = shape_from_config(ModelConfig(d_model=1024, n_heads=16, seq_len=2048, vocab_size=50304))
    s, b, h, a = 2048, 2, 1024, 16
    assert layer_activation_bytes(shape, _spec(micro_batch=b)) == s * b * h * (34 + 5 * a * s / h)
    assert layer_activation_bytes(shape, _spec(micro_batch=b, tp=4)) == s * b * h * (10 + 24 / 4 + 5 * a * s / (h * 4))
    assert layer_activation_bytes(shape, _spec(micro_batch=b, tp=4, sp=True)) == s * b * h * (34 + 5 * a * s / h) / 4


def test_mixed_precision_adam_is_16_bytes_per_param_and_fsdp_shards_it() -> None:
    shape = shape_from_config(ModelConfig(d_model=512, n_heads=8, n_layers=4))
    ddp = estimate_memory(shape, _spec(dp=8), "bf16", 80 * GIB)
    fsdp = estimate_memory(shape, _spec(dp=8, dp_mode="fsdp"), "bf16", 80 * GIB)
    state = ddp.weights + ddp.gradients + ddp.optimizer
    assert state == 16 * ddp.params_per_gpu
    assert fsdp.weights + fsdp.gradients + fsdp.optimizer == pytest.approx(state / 8)


def test_recompute_stores_far_less_than_full_activations() -> None:
    shape = shape_from_config(ModelConfig(**GPT7B_CFG["model"]))
    mem = estimate_memory(shape, _spec(micro_batch=4), "bf16", 80 * GIB)
    assert mem.activations_recompute < mem.activations / 5


def test_gpt3_on_8_gpus_cannot_fit_and_says_why() -> None:
    cfg = load_config_data(copy.deepcopy(GPT3_CFG))
    plan = build_plan(cfg, gpus=8, gpu_type="h100")
    assert not plan.layout.fits
    reason = " ".join(plan.layout.reasons)
    assert "does not fit" in reason and "GiB" in reason and "usable" in reason


def test_gpt3_on_1024_gpus_matches_megatron_published_layout() -> None:
    """Narayanan et al. 2021, Table 1: GPT-3 175B on 1024 GPUs with batch 1536 used tp=8, pp=16."""
    cfg = load_config_data(copy.deepcopy(GPT3_CFG))
    plan = build_plan(cfg, gpus=1024, gpu_type="a100-80g")
    spec = plan.layout.spec
    assert plan.layout.fits and spec is not None
    assert (spec.tp, spec.pp, spec.dp) == (8, 16, 8)
    assert spec.microbatches >= 4 * spec.pp


def test_no_valid_layout_is_reported() -> None:
    shape = shape_from_config(ModelConfig(n_heads=4, n_layers=3))
    space = SearchSpace(world=7, tp_max=8, global_batch=8, precision="bf16", capacity=80 * GIB)
    choice = recommend_layout(shape, space)
    assert not choice.fits and choice.spec is None and "no layout" in choice.reasons[0]


def test_tp_stays_inside_the_nvlink_domain() -> None:
    cfg = load_config_data(copy.deepcopy(GPT7B_CFG))
    plan = build_plan(cfg, gpus=16, gpu_type="l40s")  # no NVLink: tp must be 1
    assert plan.layout.spec is not None and plan.layout.spec.tp == 1


def test_hardware_warnings() -> None:
    shape = shape_from_config(ModelConfig(vocab_size=50257, d_model=100, n_heads=4))
    text = " ".join(hardware_warnings(shape, None))
    assert "vocab_size=50257" in text and "50304" in text
    assert "d_model/tp=100" in text


def _validate_with_layout(data: dict, plan_parallel: dict, gpus: int | None = None, per_node: int = 8) -> None:
    data = copy.deepcopy(data)
    data["parallel"] = plan_parallel
    if gpus is not None:
        data["cluster"] = {"nodes": gpus // per_node, "ranks_per_node": per_node}
    load_config_data(data)


def test_recommended_layout_for_default_config_validates() -> None:
    cfg = load_config_data({})
    plan = build_plan(cfg)
    assert plan.layout.fits
    assert plan.layout.as_parallel()["dp"] * plan.layout.spec.tp * plan.layout.spec.pp == cfg.cluster.world_size
    _validate_with_layout({}, plan.layout.as_parallel())


def test_recommended_layout_for_7b_validates() -> None:
    cfg = load_config_data(copy.deepcopy(GPT7B_CFG))
    plan = build_plan(cfg, gpus=64, gpu_type="h100")
    assert plan.layout.fits
    _validate_with_layout(GPT7B_CFG, plan.layout.as_parallel(), gpus=64)
