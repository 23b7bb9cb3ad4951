"""The layout `plan` recommends for a small model passes our validation and actually trains on the local
cluster; `submit --plan` prints the plan before launching."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config_load import load_config_data
from orchestrator.plan import build_plan
from tests.conftest import BASE, deep_merge, run_submit


@pytest.mark.slow
def test_recommended_layout_trains(tmp_path: Path) -> None:
    cfg = load_config_data(deep_merge(BASE, {"train": {"steps": 20}}))
    plan = build_plan(cfg, gpus=cfg.cluster.world_size, gpu_type="h100-sxm")
    assert plan.layout.fits
    parallel = plan.layout.as_parallel()
    load_config_data(deep_merge(BASE, {"parallel": parallel}))  # passes our own validation
    r = run_submit(tmp_path, {"parallel": parallel, "train": {"steps": 20}})
    assert r.code == 0, r.status["reason"]
    assert sorted(r.losses()) == list(range(20))


def test_submit_prints_the_plan_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(deep_merge(BASE, {"cluster": {"nodes": 0}})))
    assert main(["submit", str(p), "--plan"]) == 2  # a bad config: no plan, nothing launched
    p.write_text(yaml.safe_dump(deep_merge(BASE, {"train": {"steps": 10}, "checkpoint": {"every_steps": 5}})))
    assert main(["submit", str(p), "--plan", "--quiet", "--run-dir", str(tmp_path / "rd")]) == 0
    out = capsys.readouterr().out
    assert out.index("parameters") < out.index("COMPLETED")
