"""Short greedy continuations of a few fixed prompts, generated at each evaluation (as LLM360 did).

Why: a loss curve says the model improves; a sample says what it learned, and a broken model (a
rollback to a bad checkpoint, corrupted weights, a precision bug) reads as garbage at once. Greedy
decoding of fixed prompts is deterministic, so two runs, or a run before and after a fault, compare
line by line. The model is byte-level: a prompt is UTF-8 bytes, the continuation is decoded with
replacement characters. Only layouts where one rank holds the whole model (the data-parallel
engine) generate; split models (TP, PP, FSDP) return None rather than run collectives here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

#: the default corpus is Python source: prompts a byte model of it should learn to continue
PROMPTS: tuple[str, ...] = ("def ", "import ", "class ", "    return ")
NEW_TOKENS = 32
#: cap on a sample's text so a telemetry datagram stays far below its size limit
MAX_CHARS = 160


@torch.no_grad()
def greedy_continue(model: nn.Module, prompt: bytes, new_tokens: int, context: int, device: torch.device,
                    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                    vocab: int = 256) -> bytes:
    """``new_tokens`` greedy bytes after ``prompt``, the context cropped to the model's ``context``."""
    ids = list(prompt) or [ord("\n")]
    was_training = model.training
    model.eval()
    try:
        for _ in range(new_tokens):
            x = torch.tensor([ids[-context:]], dtype=torch.long, device=device)
            with autocast():
                logits = model(x)[0, -1, :vocab]
            ids.append(int(torch.argmax(logits.float())))
    finally:
        model.train(was_training)
    return bytes(i if i < 256 else ord("?") for i in ids[len(prompt):])


def generate(model: nn.Module, context: int, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
             prompts: Sequence[str] = PROMPTS, new_tokens: int = NEW_TOKENS) -> list[dict[str, str]]:
    """``[{prompt, text}]`` for each prompt, JSON-safe and bounded in size."""
    out = []
    for p in prompts:
        text = greedy_continue(model, p.encode(), new_tokens, context, device, autocast)
        out.append({"prompt": p, "text": text.decode("utf-8", errors="replace")[:MAX_CHARS]})
    return out


def eval_samples(engine: Any) -> list[dict[str, str]] | None:
    """Samples from the data-parallel engine's whole local model; None for layouts that split it."""
    from trainer.engine import Engine
    if type(engine) is not Engine:
        return None
    cfg = engine.cfg
    return generate(engine.module, cfg.model.seq_len, engine.device, engine.autocast)
