"""run.yaml validation: a table of bad configs, each with the message it must give, and the CLI contract
(exit 2, nothing launched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config_load import ConfigError, load_config_data

BAD = [
    ({"cluster": {"nodes": 0}}, "cluster.nodes", "greater than or equal to 1"),
    ({"cluster": {"nodez": 2}}, "cluster.nodez", "unknown key"),
    ({"train": {"steps": "many"}}, "train.steps", "valid integer"),
    ({"train": {"steps": 10}, "checkpoint": {"every_steps": 50}}, "checkpoint.every_steps", "larger than train.steps"),
    ({"health": {"heartbeat_interval_s": 5, "hang_timeout_s": 2}}, "health.heartbeat_interval_s", "must be below"),
    ({"health": {"agent_gap_multiple": 1.5}}, "health.agent_gap_multiple", "must be 0"),
    ({"health": {"agent_gap_multiple": -1}}, "health.agent_gap_multiple", "greater than or equal to 0"),
    ({"chaos": [{"fault": "nan", "step": 5, "rank": 9}]}, "chaos.0.rank", "does not exist"),
    ({"chaos": [{"fault": "meteor", "step": 5}]}, "chaos.0.fault", "Input should be"),
    ({"chaos": [{"fault": "nan", "step": 500}]}, "chaos.0.step", "never reached"),
    ({"chaos": [{"fault": "node_failure", "step": 5, "node": 7}]}, "chaos.0.node", "does not exist"),
    ({"parallel": {"dp": 3}}, "parallel", "!= world size 4"),
    ({"parallel": {"tp": 3}}, "parallel", "not divisible by tp*pp=3"),
    ({"parallel": {"tp": 2}, "model": {"n_heads": 3, "d_model": 66}}, "model.n_heads", "not divisible by parallel.tp"),
    ({"parallel": {"pp": 2, "microbatches": 1}, "model": {"n_layers": 4}}, "parallel.microbatches", "1f1b needs"),
    ({"parallel": {"pp": 2, "microbatches": 2}, "model": {"n_layers": 3}}, "model.n_layers", "pipeline stages"),
    ({"model": {"d_model": 66, "n_heads": 4}}, "model.n_heads", "not divisible"),
    ({"metrics": {"host": "0.0.0.0"}}, "metrics.host", "allow_public_bind"),
    ({"name": "../../etc"}, "name", "letters, digits"),
    ({"name": "a;rm -rf /"}, "name", "letters, digits"),
    ({"cluster": {"slurm": {"extra_sbatch": ["--comment=x\n#SBATCH --wrap=evil"]}}}, "cluster.slurm.extra_sbatch",
     "newline"),
    ({"train": {"schedule": {"warmup_steps": 200}}}, "train.schedule.warmup_steps", "below train.steps"),
    ({"data": {"source": "files"}}, "data.paths", "at least one"),
    ({"checkpoint": {"dir": "../../elsewhere"}}, "checkpoint.dir", "inside the run directory"),
]


@pytest.mark.parametrize("data,field,words", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_config_names_field_and_reason(data: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_data(data)
    paths = [i.path for i in info.value.issues]
    assert field in paths, info.value.issues
    assert words in str(info.value), str(info.value)


def test_defaults_and_overrides() -> None:
    cfg = load_config_data({}, ["train.steps=50", "chaos=[{fault: nan, step: 3}]", "cluster.nodes=4"])
    assert cfg.train.steps == 50 and cfg.cluster.nodes == 4 and cfg.chaos[0].fault == "nan"


def test_override_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="a.b=value"):
        load_config_data({}, ["novalue"])
    with pytest.raises(ConfigError, match="no such list item"):
        load_config_data({"chaos": []}, ["chaos.3.step=1"])


def test_cli_bad_config_exits_2_and_launches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"cluster": {"nodes": 0}}))
    run_dir = tmp_path / "rd"
    assert main(["submit", str(p), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "cluster.nodes" in err and err.count("\n") == 1
    assert not run_dir.exists()
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    p.write_text("cluster: [unclosed")
    assert main(["validate", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_example_configs_validate() -> None:
    for p in sorted(Path("examples").glob("*.yaml")):
        assert main(["validate", str(p)]) == 0, p
