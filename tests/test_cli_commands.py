"""The read-only commands work from a run directory alone: status (--json), report, export-trace,
compare; and probe, plan and alerts rules work from a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.metrics.exporter import LOST_CAUSES
from tests.conftest import BASE, RunResult


def test_status_json_has_the_documented_fields(clean_run: RunResult, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(clean_run.run_dir), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    for key in ("state", "step", "total_steps", "loss", "eval_loss", "goodput", "restarts", "excluded_nodes",
                "faults", "lost"):
        assert key in st, key
    assert st["state"] == "COMPLETED" and st["step"] == st["total_steps"] == 60
    assert 0 < st["goodput"] <= 1 and set(st["lost"]) == set(LOST_CAUSES)


def test_status_of_a_non_run_is_exit_2(tmp_path: Path) -> None:
    assert main(["status", str(tmp_path)]) == 2


def test_report_trace_compare(clean_run: RunResult, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(clean_run.run_dir), "--out", str(out)]) == 0
    html = out.read_text()
    assert "<img" in html and "data:image/png;base64" in html
    trace = tmp_path / "trace.json"
    assert main(["export-trace", str(clean_run.run_dir), "--out", str(trace)]) == 0
    assert main(["compare", str(clean_run.run_dir), str(trace)]) == 0
    doc = json.loads(trace.read_text())
    for row in doc.get("steps", []):
        if isinstance(row, dict) and row.get("loss") is not None:
            row["loss"] *= 1.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert main(["compare", str(bad), str(trace)]) == 1


def test_probe_plan_and_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "health": {**BASE["health"], "probes": ["node", "gpu"]}}))
    assert main(["probe", str(cfg), "--json"]) in (0, 1)
    results = json.loads(capsys.readouterr().out)
    assert {r["probe"] for r in results} >= {"node", "gpu"}
    gpu = next(r for r in results if r["probe"] == "gpu")
    assert gpu["verdict"] in ("skipped", "ok", "degraded", "failed")
    assert main(["plan", str(cfg), "--json"]) in (0, 1)
    plan = json.loads(capsys.readouterr().out)
    assert plan
    assert main(["alerts", "rules"]) == 0
    rules = yaml.safe_load(capsys.readouterr().out)
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"TrainingStalled", "NaNLoss", "RestartBudgetExhausted"} <= names
