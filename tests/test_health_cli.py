"""The probe CLI and the srun entry point: JSON shape and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from health.probe_cli import main, run_probes
from health.probes.result import ProbeResult, worst_verdict
from orchestrator.config import RunConfig


def test_run_probes_node_and_gpu(tmp_path: Path) -> None:
    results = run_probes(RunConfig(), ["node", "gpu"], tmp_path)
    assert [r.probe for r in results] == ["node", "gpu"]
    assert results[1].verdict == "skipped"  # no GPU on this machine, none expected for device=cpu


def test_unknown_probe_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid probes are: node, gpu, collective"):
        run_probes(None, ["gpus"], ".")


def test_main_json_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(None, True, probes=["gpu"], checkpoint_dir=str(tmp_path))
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out[0]["probe"] == "gpu" and set(out[0]) >= {"probe", "node", "verdict", "evidence"}
    assert ProbeResult.from_json(out[0]).verdict == "skipped"


def test_main_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(None, False, probes=["gpu"], checkpoint_dir=str(tmp_path)) == 0
    assert "health probes" in capsys.readouterr().out


def test_probe_entry_subprocess(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "health.probe_entry", "--json", "--probes", "gpu,node",
                        "--checkpoint-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode in (0, 1), p.stderr
    data = json.loads(p.stdout)
    assert [d["probe"] for d in data] == ["gpu", "node"]
    assert p.returncode == (1 if any(d["verdict"] == "failed" for d in data) else 0)


def test_worst_verdict() -> None:
    assert worst_verdict([]) == "skipped"
    assert worst_verdict(["ok", "skipped", "degraded"]) == "degraded"
    assert worst_verdict(["degraded", "failed", "ok"]) == "failed"
