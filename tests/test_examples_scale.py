"""The at-scale examples (Llama-7B on 16x8 H100, Llama-70B on 128x8 H100, Slurm) validate, use the
layout `orchestrator plan` recommends, and checkpoint at its Young/Daly interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config_load import layout_warnings, load_config
from slurm.sbatch_options import sbatch_arguments

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCALE = {"llama7b-16x8-h100.yaml": (16, 6.7e9), "llama70b-128x8-h100.yaml": (128, 70e9)}


@pytest.mark.parametrize("name", sorted(SCALE))
def test_example_validates_without_warnings(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / name
    assert main(["validate", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err
    cfg = load_config(path)
    nodes, _ = SCALE[name]
    assert (cfg.cluster.backend, cfg.cluster.nodes, cfg.cluster.ranks_per_node) == ("slurm", nodes, 8)
    assert (cfg.cluster.device, cfg.train.precision, cfg.parallel.dp_mode) == ("cuda", "bf16", "fsdp")
    assert cfg.cluster.slurm.gpus_per_node == 8 and "collective" in cfg.health.probes
    assert cfg.checkpoint.async_save and cfg.health.hang_timeout_s >= 60 * cfg.health.heartbeat_interval_s
    assert not layout_warnings(cfg)
    args = sbatch_arguments(cfg)
    assert f"--nodes={nodes}" in args and "--gpus-per-node=8" in args and "--exclusive" in args


@pytest.mark.parametrize("name", sorted(SCALE))
def test_example_follows_the_plan(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(EXAMPLES / name), "--gpu-type", "h100", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    nodes, params = SCALE[name]
    assert plan["gpus"] == nodes * 8
    assert plan["params"] == pytest.approx(params, rel=0.05)
    assert plan["configured_layout"]["parallel"] == plan["layout"]["parallel"]  # the recommended layout
    assert plan["configured_layout"]["fits"] and not plan["configured_layout"]["recompute"]
    assert not plan["warnings"] and not plan["configured_layout"]["warnings"]
    rel = plan["reliability"]
    assert rel["configured_every_steps"] == pytest.approx(rel["interval_steps"], rel=0.05)  # Young/Daly
    assert rel["configured_goodput"] >= 0.99
