"""``orchestrator ls``: one row per run directory, read from files only, robust to garbage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator import rundir
from orchestrator.cli import main
from orchestrator.ls import NOT_STARTED, UNKNOWN, ago, list_runs
from orchestrator.snapshot import FaultRecord, RunSnapshot, write_status
from tests.test_cli_errors import tree


def _journal(run: Path, *events: dict[str, object], torn_tail: bool = False) -> None:
    lines = [json.dumps({"seq": i, "t": 1.0, **e}) for i, e in enumerate(events)]
    (run / "journal.jsonl").write_text("\n".join(lines) + "\n" + ('{"seq": 99, "ev' if torn_tail else ""))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    done = root / "done"
    done.mkdir()
    (done / "config.yaml").write_text("name: done\n")
    write_status(done, RunSnapshot(name="done", state="COMPLETED", step=60, total_steps=60, goodput=0.8, restarts=1,
                                   faults=[FaultRecord("nan", 8, 1, 0, 0.1, "skip_step")]))
    torn = root / "group" / "torn"  # nested one level, status torn mid-write, journal with a torn tail
    torn.mkdir(parents=True)
    (torn / "status.json").write_text('{"name": "torn", "sta')
    _journal(torn, {"event": "run_start", "name": "torn", "total_steps": 50},
             {"event": "state", "from": "PENDING", "to": "RUNNING"},
             {"event": "launch", "attempt": 0}, {"event": "fault", "kind": "hang"},
             {"event": "launch", "attempt": 1}, {"event": "checkpoint", "step": 20}, torn_tail=True)
    never = root / "never"
    never.mkdir()
    (never / "config.yaml").write_text("name: never\n")
    weird = root / "weird"  # status.json of the wrong shape and types
    weird.mkdir()
    (weird / "status.json").write_text('{"state": "RUNNING", "step": "x", "faults": 3, "goodput": "NaN"}')
    listy = root / "listy"
    listy.mkdir()
    (listy / "status.json").write_text("[1, 2]")
    (root / "binary").mkdir()
    (root / "binary" / "status.json").write_bytes(b"\xff\xfe\x00garbage")
    (root / "notes.txt").write_text("not a run\n")
    (root / "fifo").mkdir()
    os.mkfifo(root / "fifo" / "status.json")  # reading it would block: must be skipped, not read
    (root / "loop").symlink_to(root)
    (root / "empty").mkdir()
    return root


def test_ls_lists_every_run_and_survives_garbage(runs: Path) -> None:
    rows = {r.path: r for r in list_runs(runs)}
    assert set(rows) == {"done", "group/torn", "never", "weird", "listy", "binary", "fifo"}
    assert (rows["fifo"].state, rows["fifo"].note) == ("UNREADABLE", "not regular files")
    d = rows["done"]
    assert (d.state, d.step, d.total_steps, d.goodput, d.faults, d.restarts) == ("COMPLETED", 60, 60, 0.8, 1, 1)
    t = rows["group/torn"]
    assert (t.name, t.state, t.step, t.total_steps, t.faults, t.restarts) == ("torn", "RUNNING", 20, 50, 1, 1)
    assert t.note == "status.json torn"
    assert rows["never"].state == NOT_STARTED
    assert (rows["weird"].state, rows["weird"].step, rows["weird"].faults, rows["weird"].goodput) == \
        ("RUNNING", None, None, None)
    assert {(rows[r].state, rows[r].note) for r in ("listy", "binary")} == {("UNREADABLE", "status.json unreadable")}


def test_ls_cli_json_and_table_change_nothing(runs: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree(runs)
    assert main(["ls", str(runs), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["path"] for r in doc} >= {"done", "group/torn"}
    monkeypatch.chdir(runs.parent)  # default DIR is ./runs
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "COMPLETED" in out and "60/60" in out and "0.800" in out and "None" not in out
    assert tree(runs) == before


def test_ls_tells_a_supervised_run(runs: Path) -> None:
    run = runs / "done"
    lock = rundir.lock(run)
    try:
        assert {r.path: r.supervised for r in list_runs(runs)}["done"] is True
    finally:
        lock.close()
    assert {r.path: r.supervised for r in list_runs(runs)}["done"] is False


def test_ls_of_a_single_run_and_of_nothing(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [r.state for r in list_runs(runs / "done")] == ["COMPLETED"]
    assert main(["ls", str(tmp_path / "nothing-here")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "blank").mkdir()
    assert main(["ls", str(tmp_path / "blank")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_ago() -> None:
    assert [ago(t, 100_000.0) for t in (99_990.0, 99_700.0, 90_000.0, 1.0, None)] == \
        ["10s ago", "5m ago", "3h ago", "1d ago", "—"]
