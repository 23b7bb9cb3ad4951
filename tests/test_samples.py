"""Samples during training: greedy continuations of fixed prompts are deterministic, bounded and
JSON-safe, and the report shows them (escaped) from the journal's ``samples`` events."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spec.config import ModelConfig
from orchestrator.report import write_report
from trainer.model import GPT
from trainer.samples import MAX_CHARS, PROMPTS, generate, greedy_continue


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2, seq_len=8))


def test_greedy_is_deterministic_bounded_and_keeps_train_mode() -> None:
    m = _model()
    m.train()
    a = greedy_continue(m, b"def ", 12, context=8, device=torch.device("cpu"))
    b = greedy_continue(m, b"def ", 12, context=8, device=torch.device("cpu"))
    assert a == b and len(a) == 12 and m.training  # vocab 300: ids >= 256 never leak out as bytes
    assert greedy_continue(m, b"", 3, context=8, device=torch.device("cpu"))  # empty prompt: starts at \n


def test_generate_is_json_safe_and_changes_with_the_weights() -> None:
    out = generate(_model(0), context=8, device=torch.device("cpu"), new_tokens=20)
    assert [s["prompt"] for s in out] == list(PROMPTS)
    assert all(len(s["text"]) <= MAX_CHARS for s in out)
    assert json.loads(json.dumps(out)) == out
    assert out != generate(_model(1), context=8, device=torch.device("cpu"), new_tokens=20)


def test_report_shows_samples_escaped(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    events = [{"seq": 0, "t": 1.0, "event": "run_start", "name": "s"},
              {"seq": 1, "t": 2.0, "event": "samples", "step": 20,
               "samples": [{"prompt": "def ", "text": "<script>x</script>"}, "garbage"]},
              {"seq": 2, "t": 3.0, "event": "samples", "step": 40, "samples": [{"prompt": "def ", "text": "foo():"}]}]
    (run / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    page = write_report(run).read_text()
    assert "<h2>Samples</h2>" in page and "foo():" in page
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    (run / "journal.jsonl").write_text(json.dumps(events[0]) + "\n")
    assert "<h2>Samples</h2>" not in write_report(run).read_text()
