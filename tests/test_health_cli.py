"""The probe CLI and the srun entry point: JSON shape and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from health.probe_cli import main, run_probes
from health.probes.result import ProbeResult, worst_verdict
from spec.config import RunConfig

HAS_GPU = torch.cuda.is_available()
GPU_VERDICTS = ("ok", "degraded") if HAS_GPU else ("skipped",)  # a real verdict where a GPU is present


def test_run_probes_node_and_gpu(tmp_path: Path) -> None:
    results = run_probes(RunConfig(), ["node", "gpu"], tmp_path)
    assert [r.probe for r in results] == ["node", "gpu"]
    assert results[1].verdict in GPU_VERDICTS  # none expected for device=auto: no GPU is not a failure


def test_unknown_probe_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid probes are: node, gpu, collective"):
        run_probes(None, ["gpus"], ".")


def test_main_json_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(None, True, probes=["gpu"], checkpoint_dir=str(tmp_path))
    out = json.loads(capsys.readouterr().out)
    assert out[0]["probe"] == "gpu" and set(out[0]) >= {"probe", "node", "verdict", "evidence"}
    assert ProbeResult.from_json(out[0]).verdict in GPU_VERDICTS and rc == 0


@pytest.mark.skipif(HAS_GPU, reason="checks what a machine without a usable GPU reports")
def test_cuda_requested_without_gpu_fails_with_the_ranks_message(tmp_path: Path) -> None:
    """`orchestrator probe` says what a rank would say: the node and what is missing."""
    cfg = RunConfig.model_validate({"cluster": {"device": "cuda"}})
    (gpu,) = run_probes(cfg, ["gpu"], tmp_path)
    assert (gpu.verdict, gpu.fault_kind) == ("failed", "gpu_error")
    assert "cluster.device is cuda but no usable GPU" in gpu.evidence["reason"]
    assert gpu.evidence["problems"][0] == gpu.evidence["reason"]


def test_cuda_probe_cli_exit_code_and_validate_passes(tmp_path: Path) -> None:
    """On a login node without GPUs `validate` of a cuda config passes; `probe` fails (exit 1) there."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("cluster: {device: cuda, nodes: 1, ranks_per_node: 1}\nhealth: {probes: [gpu]}\n")
    root = Path(__file__).resolve().parents[1]
    v = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(cfg)], capture_output=True,
                       text=True, timeout=120, cwd=root)
    assert v.returncode == 0, v.stdout + v.stderr
    p = subprocess.run([sys.executable, "-m", "orchestrator.cli", "probe", str(cfg), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=root)
    gpu = json.loads(p.stdout)[0]
    if HAS_GPU:
        assert p.returncode == (1 if gpu["verdict"] == "failed" else 0)
    else:
        assert p.returncode == 1 and "cluster.device is cuda but" in gpu["evidence"]["reason"]


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
