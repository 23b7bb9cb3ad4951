"""validate_layout, rank_layout and node_map: pure arithmetic, no processes."""

from __future__ import annotations

from typing import Any

import pytest

from trainer.parallel import node_map, rank_layout, validate_layout
from benchmarks.layout_harness import make_cfg

CASES: list[tuple[str, dict[str, Any], set[str], str | None]] = [
    # name, make_cfg kwargs, error fields expected, warning substring expected
    ("ok", {"dp": 2, "tp": 2, "pp": 2}, set(), None),
    ("heads", {"tp": 8, "model": {"n_heads": 4, "d_model": 64}}, {"model.n_heads"}, None),
    ("d_model", {"tp": 3, "model": {"n_heads": 3, "d_model": 32, "vocab_size": 255, "d_ff": 96}},
     {"model.d_model"}, None),
    ("d_ff", {"tp": 2, "model": {"d_ff": 33}}, {"model.d_ff"}, None),
    ("vocab", {"tp": 2, "model": {"vocab_size": 255}}, {"model.vocab_size"}, "multiple of 64"),
    ("layers-pp", {"pp": 3, "model": {"n_layers": 4}, "microbatches": 3, "batch": 9}, {"model.n_layers"}, None),
    ("layers-interleaved", {"pp": 2, "schedule": "interleaved_1f1b", "model": {"n_layers": 2}},
     {"model.n_layers"}, None),
    ("microbatches<pp", {"pp": 2, "microbatches": 1}, {"parallel.microbatches"}, None),
    ("gpipe-1-microbatch", {"pp": 2, "schedule": "gpipe", "microbatches": 1}, set(), None),
    ("batch/dp/mb", {"dp": 2, "microbatches": 3}, {"parallel.microbatches"}, None),
    ("batch/dp", {"dp": 3, "microbatches": 1}, {"train.global_batch"}, None),
    ("sp-seq", {"tp": 2, "sp": True, "model": {"seq_len": 15}}, {"model.seq_len"}, None),
    ("dims-mult-16", {"model": {"d_model": 40, "n_heads": 4}}, set(), "multiple of 16"),
    ("ddp-hybrid", {"tp": 2, "dp_mode": "ddp"}, set(), "replicate"),
]


@pytest.mark.parametrize("name,kwargs,fields,warning", CASES, ids=[c[0] for c in CASES])
def test_validate_layout(name: str, kwargs: dict[str, Any], fields: set[str], warning: str | None) -> None:
    cfg = make_cfg(**kwargs)
    errors, warnings = validate_layout(cfg)
    assert {f for f, _ in errors} == fields, errors
    if warning:
        assert any(warning in w for w in warnings), warnings


def test_tp_group_crossing_nodes_warns() -> None:
    cfg = make_cfg(tp=4, dp=2).model_copy(deep=True)
    cfg.cluster.ranks_per_node, cfg.cluster.nodes = 2, 4
    _, warnings = validate_layout(cfg)
    assert any("crosses nodes" in w for w in warnings)


def test_rank_layout_puts_tp_innermost_and_dp_outermost() -> None:
    cfg = make_cfg(dp=2, tp=2, pp=2)
    layout = rank_layout(cfg)
    assert layout[0] == (0, 0, 0) and layout[1] == (0, 0, 1) and layout[2] == (0, 1, 0)
    assert layout[4] == (1, 0, 0) and layout[7] == (1, 1, 1)
    cfg.cluster.ranks_per_node, cfg.cluster.nodes = 2, 4
    text = node_map(cfg)
    assert text.splitlines()[0] == "node 0: r0(dp0,pp0,tp0) r1(dp0,pp0,tp1)"
    assert len(text.splitlines()) == 4


def test_world_mismatch_is_an_error() -> None:
    errors, _ = validate_layout(make_cfg(dp=2, tp=2), world=8)
    assert errors and errors[0][0] == "parallel"
