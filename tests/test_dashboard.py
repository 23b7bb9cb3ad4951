"""The Grafana dashboard is built from the exporter's series names and is a well-formed JSON model.
(tests/test_prometheus_training.py runs every query against a real Prometheus during a faulty run.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.dashboard import ALERTS_SERIES, _m, build, queries, series_named
from orchestrator.metrics.exporter import SERIES


def test_every_query_reads_exported_series_of_the_selected_run() -> None:
    qs = queries(build())
    assert len(qs) >= 20
    for where, expr in qs:
        names = series_named(expr)
        assert names, where
        assert names <= set(SERIES) | {ALERTS_SERIES}, (where, names - set(SERIES))
        assert 'run=~"$run"' in expr, where


def test_a_series_the_exporter_lacks_is_refused() -> None:
    with pytest.raises(KeyError, match="not exported"):
        _m("goodput_percent")


def test_layout_and_ids() -> None:
    d = build()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in range(len(p["targets"]))]
    titles = {p["title"] for p in d["panels"]}
    assert {"Goodput", "Goodput and lost time by cause", "Step time per node", "Loss and eval loss",
            "Restarts and faults", "Excluded nodes", "Checkpoint age", "Alerts firing"} <= titles
    assert {a["name"] for a in d["annotations"]["list"]} >= {"Faults", "Restarts"}
    assert [v["name"] for v in d["templating"]["list"]] == ["datasource", "run"]


def test_cli_prints_and_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--title", "my run", "--uid", "my-run"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["title"], doc["uid"]) == ("my run", "my-run")
    out = tmp_path / "d.json"
    assert main(["dashboard", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == build()
    assert main(["dashboard", "--out", str(tmp_path)]) == 2
    assert main(["dashboard", "--uid", "a b"]) == 2
    assert "is a directory" in capsys.readouterr().err
