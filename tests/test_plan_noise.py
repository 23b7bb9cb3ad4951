"""Gradient noise scale from metrics.jsonl: exact on noise-free synthetic norms, honest when it cannot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator.plan.noise import estimate_noise_scale, two_size_estimate


def _write(run_dir: Path, rows: list[dict]) -> None:
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_two_size_estimator_recovers_b_simple() -> None:
    g2, tr = 2.0, 256.0  # B_simple = 128
    assert two_size_estimate((8, g2 + tr / 8), (64, g2 + tr / 64)) == pytest.approx(128.0)


def test_estimate_from_two_batch_sizes(tmp_path: Path) -> None:
    rows = [{"step": i, "loss": 3.0, "grad_norm": math.sqrt(1 + 64 / b), "batch": b}
            for i, b in enumerate([8, 32] * 40)]
    _write(tmp_path, rows)
    ns = estimate_noise_scale(tmp_path, seq_len=64, global_batch=32)
    assert ns.b_simple == pytest.approx(64.0)
    assert ns.batch_sizes == (8, 32) and "B_simple" in ns.message


def test_estimate_from_local_norms(tmp_path: Path) -> None:
    rows = [{"step": i, "loss": 3.0, "grad_norm": math.sqrt(1 + 64 / 32),
             "grad_norm_local": math.sqrt(1 + 64 / 8), "local_batch": 8} for i in range(40)]
    _write(tmp_path, rows)
    assert estimate_noise_scale(tmp_path, seq_len=64, global_batch=32).b_simple == pytest.approx(64.0)


def test_single_batch_size_says_not_enough(tmp_path: Path) -> None:
    _write(tmp_path, [{"step": i, "loss": 3.0, "grad_norm": 1.0 + 0.1 * (i % 3)} for i in range(100)])
    ns = estimate_noise_scale(tmp_path, seq_len=64, global_batch=32)
    assert ns.b_simple is None and "single batch size" in ns.message


def test_missing_or_short_metrics_say_not_enough(tmp_path: Path) -> None:
    assert "0 usable" in estimate_noise_scale(tmp_path, 64, 8).message
    _write(tmp_path, [{"step": i, "grad_norm": 1.0} for i in range(5)] + [{"step": 9, "grad_norm": None}])
    assert "5 usable" in estimate_noise_scale(tmp_path, 64, 8).message
