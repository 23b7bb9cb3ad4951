"""``orchestrator plan`` entry point: tables, JSON, exit codes, and the measured inputs of --run-dir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from orchestrator.plan.cli import add_arguments, main, parse_count

BIG = """name: big
model: {vocab_size: 50257, d_model: 12288, n_layers: 96, n_heads: 96, seq_len: 2048}
train: {global_batch: 1536, precision: bf16, steps: 1000}
checkpoint: {every_steps: 100}
"""


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _yaml(tmp_path: Path, text: str = "name: small\n") -> str:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


def test_parse_count() -> None:
    assert parse_count("1.4T") == 1.4e12 and parse_count("300b") == 3e11 and parse_count("2e12") == 2e12
    with pytest.raises(argparse.ArgumentTypeError):
        parse_count("lots")


def test_tables_for_default_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(_yaml(tmp_path), "--price-per-gpu-hour", "2")) == 0
    out = capsys.readouterr().out
    for needle in ("parameters", "Chinchilla", "Memory per GPU", "Young/Daly", "cost", "dp=4 tp=1 pp=1"):
        assert needle in out


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(_yaml(tmp_path), "--json", "--gpus", "8", "--gpu-type", "h200", "--tokens", "1B")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["gpus"] == 8 and doc["gpu"]["name"] == "h200" and doc["tokens"] == 1e9
    assert doc["layout"]["fits"] and doc["layout"]["parallel"]["dp"] == 8
    assert doc["reliability"]["interval_s"] > 0


def test_cannot_fit_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(_yaml(tmp_path, BIG), "--gpus", "8")) == 1
    assert "CANNOT FIT" in capsys.readouterr().out


def test_bad_config_and_gpu_type_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(str(tmp_path / "missing.yaml"))) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(_args(_yaml(tmp_path), "--gpu-type", "tpu9")) == 2
    assert "unknown GPU type" in capsys.readouterr().err


def test_run_dir_measurements(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "prev"
    run.mkdir()
    (run / "journal.jsonl").write_text('{"seq":0,"t":1,"event":"checkpoint","step":20,"path":"x","save_s":3.5}\n')
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 2.0, "grad_norm": 1.0}) + "\n"
                                               for i in range(30)))
    assert main(_args(_yaml(tmp_path), "--run-dir", str(run), "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["reliability"]["checkpoint"]["seconds"] == 3.5
    assert doc["noise_scale"]["b_simple"] is None and "single batch size" in doc["noise_scale"]["message"]
