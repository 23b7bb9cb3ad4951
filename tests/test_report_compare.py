"""export_trace round-trips through the documented format; compare finds where runs diverge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator.report import compare, compare_main, export_main, export_trace, load_trace
from orchestrator.report.trace import TRACE_VERSION
from tests.test_report_synthetic import make_run_dir


def test_trace_format(tmp_path: Path) -> None:
    out = export_trace(make_run_dir(tmp_path), tmp_path / "t" / "trace.json")
    doc = json.loads(out.read_text())  # strict JSON: no NaN tokens
    assert doc["format"] == "orchestrator-trace" and doc["version"] == TRACE_VERSION == 1
    assert doc["run"] == "synth" and doc["total_steps"] == 120
    assert [s["step"] for s in doc["steps"]] == list(range(1, 121))
    assert doc["steps"][24] == {"step": 25, "loss": None, "grad_norm": doc["steps"][24]["grad_norm"],
                                "skipped": True}
    assert set(doc["steps"][0]) == {"step", "loss", "grad_norm", "skipped"}
    assert [e["step"] for e in doc["eval"]] == [20, 40, 60, 80, 100, 120]
    assert load_trace(out) == doc


def test_trace_version_checked(tmp_path: Path) -> None:
    bad = tmp_path / "v2.json"
    bad.write_text(json.dumps({"format": "orchestrator-trace", "version": 2, "steps": []}))
    with pytest.raises(ValueError, match="version 2"):
        load_trace(bad)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not an orchestrator trace"):
        load_trace(tmp_path / "other.json")


def test_same_curve_different_noise_matches(tmp_path: Path) -> None:
    a = make_run_dir(tmp_path, "a", seed=1)
    b = make_run_dir(tmp_path, "b", seed=2)
    res = compare(a, export_trace(b, tmp_path / "b.json"))
    assert res.verdict == "match" and res.first_divergent_step is None
    assert res.common_steps == 119 and res.max_divergence < 0.05  # step 25 (NaN) is left out


def test_offset_curve_diverges_where_it_starts(tmp_path: Path) -> None:
    ref = make_run_dir(tmp_path, "ref")
    doc = json.loads(export_trace(ref, tmp_path / "ref.json").read_text())
    for s in doc["steps"]:
        if s["step"] > 70 and s["loss"] is not None:
            s["loss"] *= 1.3  # a regression from step 71 on
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    res = compare(tmp_path / "bad.json", ref, tolerance=0.05, window=5)
    assert res.verdict == "diverged"
    assert 71 <= res.first_divergent_step <= 73
    assert res.max_divergence == pytest.approx(0.3, abs=0.01)
    assert res.max_divergence_step > 75
    assert math.isclose(res.final_loss / res.final_loss_reference, 1.3, rel_tol=1e-9)


def test_eval_divergence_alone_is_a_divergence(tmp_path: Path) -> None:
    ref = make_run_dir(tmp_path, "ref")
    doc = json.loads(export_trace(ref, tmp_path / "ref.json").read_text())
    doc["eval"][-1]["eval_loss"] *= 2
    (tmp_path / "ev.json").write_text(json.dumps(doc))
    res = compare(tmp_path / "ev.json", ref)
    assert res.verdict == "diverged" and res.first_divergent_step is None
    assert res.eval_step == 120 and res.eval_divergence == pytest.approx(1.0)


def test_no_overlap_is_an_error(tmp_path: Path) -> None:
    doc = {"format": "orchestrator-trace", "version": 1, "run": "x", "steps": [
        {"step": 1000, "loss": 1.0, "grad_norm": None, "skipped": False}], "eval": []}
    (tmp_path / "far.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="no step"):
        compare(tmp_path / "far.json", make_run_dir(tmp_path))


def test_main_functions_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = make_run_dir(tmp_path, "a", seed=1), make_run_dir(tmp_path, "b", offset=1.0)
    assert export_main(a, tmp_path / "a.json") == 0
    assert compare_main(tmp_path / "a.json", a, 0.05, False) == 0
    assert "MATCH" in capsys.readouterr().out
    assert compare_main(a, b, 0.05, True) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] == "diverged" and result["first_divergent_step"] == 1
    assert compare_main(a, tmp_path / "nope", 0.05, False) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert export_main(tmp_path / "nope", tmp_path / "x.json") == 2
