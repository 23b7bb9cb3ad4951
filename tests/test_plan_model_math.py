"""Parameter counts and FLOPs against published model sizes (pure arithmetic, no torch needed)."""

from __future__ import annotations

import pytest

from spec.config import ModelConfig
from orchestrator.plan.model_math import (ModelShape, chinchilla_tokens, count_params, shape_from_config, six_nd,
                                          stage_params, training_flops)

LLAMA2_7B = ModelShape(vocab=32000, d_model=4096, n_layers=32, n_heads=32, ffn=11008, seq_len=4096,
                       mlp="swiglu", norm="rmsnorm", bias=False, tied_head=False, position="none")
GPT3_175B = ModelShape(vocab=50257, d_model=12288, n_layers=96, n_heads=96, ffn=4 * 12288, seq_len=2048,
                       tied_head=True)


def test_llama2_7b_shape_counts_6_74b() -> None:
    n = count_params(LLAMA2_7B)
    assert n == pytest.approx(6.74e9, rel=0.01)
    assert n == 6_738_415_616  # the exact count of the released checkpoint


def test_gpt3_shape_counts_175b() -> None:
    assert count_params(GPT3_175B) == pytest.approx(175e9, rel=0.01)


def test_llama2_70b_gqa_shape_counts_69b() -> None:
    shape = ModelShape(vocab=32000, d_model=8192, n_layers=80, n_heads=64, kv_heads=8, ffn=28672, seq_len=4096,
                       mlp="swiglu", norm="rmsnorm", bias=False, tied_head=False, position="none")
    assert count_params(shape) == pytest.approx(68.98e9, rel=0.01)


def test_project_gpt_count_by_hand() -> None:
    """Default config: V=256, d=64, L=2, ffn=256, S=64, biased linears, LayerNorm, untied bias-free head."""
    d, v, s, f = 64, 256, 64, 256
    block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    expected = v * d + s * d + 2 * block + 2 * d + d * v
    assert count_params(shape_from_config(ModelConfig())) == expected


def test_stages_add_up_to_the_model_when_head_untied() -> None:
    shape = shape_from_config(ModelConfig(n_layers=8))
    assert sum(stage_params(shape, 4, i) for i in range(4)) == count_params(shape)


def test_tied_head_is_duplicated_on_the_last_stage_only_when_pipelined() -> None:
    assert stage_params(GPT3_175B, 1, 0) == count_params(GPT3_175B)
    total = sum(stage_params(GPT3_175B, 8, i) for i in range(8))
    assert total == count_params(GPT3_175B) + GPT3_175B.vocab * GPT3_175B.d_model


def test_chinchilla_70b_on_1_4t_tokens() -> None:
    assert six_nd(70e9, 1.4e12) == pytest.approx(5.88e23, rel=0.01)
    assert chinchilla_tokens(70e9) == pytest.approx(1.4e12)


def test_training_flops_adds_attention_per_token() -> None:
    f = training_flops(GPT3_175B, 300e9)
    assert f["six_nd"] == pytest.approx(6 * count_params(GPT3_175B) * 300e9)
    assert f["with_attention"] - f["six_nd"] == pytest.approx(12 * 96 * 12288 * 2048 * 300e9)
    assert f["six_nd"] == pytest.approx(3.14e23, rel=0.01)  # GPT-3 paper, Table D.1


def test_count_matches_trainer_model_when_available() -> None:
    torch_model = pytest.importorskip("trainer.model")
    for cfg in (ModelConfig(), ModelConfig(vocab_size=300, d_model=96, n_layers=3, n_heads=6, d_ff=200)):
        assert torch_model.count_parameters(torch_model.GPT(cfg)) == count_params(shape_from_config(cfg))
