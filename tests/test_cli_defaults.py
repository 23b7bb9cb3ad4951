"""Defaults that do not trip people: pp>1 without microbatches picks a valid count (and says so), and
the summary table shows unknowns as a dash and whole action names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from rich.console import Console

from orchestrator.cli import main
from orchestrator.config_load import ConfigError, default_microbatches, layout_warnings, load_config_data
from orchestrator.progress import UNKNOWN, summary_table
from orchestrator.snapshot import FaultRecord, RunSnapshot

TP2_PP2 = {"cluster": {"nodes": 2, "ranks_per_node": 2}, "model": {"d_model": 32, "n_layers": 2, "n_heads": 4},
           "parallel": {"tp": 2, "pp": 2}}


@pytest.mark.parametrize("per_replica,pp,expected", [(8, 2, 2), (6, 4, 6), (9, 2, 3), (3, 4, None), (8, 1, 1)])
def test_default_microbatches(per_replica: int, pp: int, expected: int | None) -> None:
    assert default_microbatches(per_replica, pp) == expected


def test_pp_without_microbatches_is_valid_and_said() -> None:
    cfg = load_config_data(TP2_PP2)
    assert cfg.parallel.microbatches == 2
    assert cfg.dump()["parallel"]["microbatches"] == 2  # the resolved config (run dir) holds the choice
    assert any("parallel.microbatches not set: using 2" in w for w in layout_warnings(cfg))


def test_explicit_microbatches_are_kept_and_checked() -> None:
    with pytest.raises(ConfigError, match="1 < pp=2"):
        load_config_data({**TP2_PP2, "parallel": {"tp": 2, "pp": 2, "microbatches": 1}})
    cfg = load_config_data({**TP2_PP2, "parallel": {"tp": 2, "pp": 2, "microbatches": 4}})
    assert cfg.parallel.microbatches == 4 and not any("microbatches" in w for w in layout_warnings(cfg))


def test_validate_prints_the_chosen_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(TP2_PP2))
    assert main(["validate", str(path)]) == 0
    assert "warning: parallel.microbatches not set: using 2" in capsys.readouterr().err


def test_summary_table_dashes_unknowns_and_keeps_actions_whole() -> None:
    snap = RunSnapshot(name="r", state="COMPLETED", faults=[
        FaultRecord("node_failure", 20, None, 1, 0.5, "exclude_node"),
        FaultRecord("hang", None, 3, None, None, "relaunch")])
    console = Console(width=60, record=True)
    console.print(summary_table(snap))
    text = console.export_text()
    assert "None" not in text
    assert "exclude_node" in text and "…" not in text
    assert text.count(UNKNOWN) >= 4
