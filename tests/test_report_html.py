"""write_report: a self-contained HTML with embedded plots, PNGs beside it, every fault in the table."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from orchestrator.report import report_main, write_report
from orchestrator.report.plots import goodput_series, marker_steps
from orchestrator.report.rundir import load_run
from tests.test_report_synthetic import make_run_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path)


def test_report_is_self_contained(run_dir: Path) -> None:
    out = write_report(run_dir)
    assert out == run_dir / "report" / "report.html"
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in images)
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page  # nothing external


def test_pngs_written_next_to_html(run_dir: Path, tmp_path: Path) -> None:
    out = write_report(run_dir, tmp_path / "elsewhere" / "r.html")
    for slug in ("loss", "step-time", "goodput"):
        png = out.parent / f"r-{slug}.png"
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000


def test_fault_table_lists_every_fault_and_action_escaped(run_dir: Path) -> None:
    page = write_report(run_dir).read_text()
    table = page.split("<h2>Faults and actions</h2>", 1)[1]
    for text in ("nan", "straggler", "loss_spike", "rank_crash", "skip_step", "rollback", "relaunch"):
        assert text in table
    assert "&lt;b&gt;" in table and "<b>" not in table  # journal text is escaped


def test_markers_cover_faults_rollbacks_skips_relaunches(run_dir: Path) -> None:
    marks = marker_steps(load_run(run_dir))
    assert {s for s, _ in marks["fault"]} == {25, 48, 60, 90}
    assert [s for s, _ in marks["rollback"]] == [60]
    assert 25 in {s for s, _ in marks["skip_step"]}
    assert marks["relaunch"] == [(80, "attempt 1")]


def test_goodput_series_bounded_and_dips_after_faults(run_dir: Path) -> None:
    series = goodput_series(load_run(run_dir))
    values = [g for _, g in series]
    assert all(0 <= g <= 1 for g in values) and len(values) == 120
    assert values[-1] < max(values)  # the relaunch pause costs goodput


def test_report_without_node_data_or_status(tmp_path: Path) -> None:
    run_dir = tmp_path / "bare"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        "".join(f'{{"step": {s}, "attempt": 0, "t": {s}.0, "loss": {5 - s * 0.1}}}\n' for s in range(1, 20)))
    page = write_report(run_dir).read_text()
    assert "No data in metrics.jsonl for this plot" in page
    assert "No faults" in page


def test_report_main(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main(run_dir, tmp_path / "x.html") == 0
    assert "x.html" in capsys.readouterr().out
    assert report_main(tmp_path / "missing", None) == 2
    assert "run directory" in capsys.readouterr().err
