"""Real text, byte-level tokens, and a data order that is a pure function of (seed, sample index).

The default corpus is the Python standard library's own source files, read at run time: every machine
with Python has it. A resumed or rolled-back run sees exactly the samples it would have seen, minus the
skipped ones, because the sampler's whole state is ``(cursor, skip set)`` and is checkpointed.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spec.config import DataConfig


SKIP_DIRS = ("site-packages", "test")


def stdlib_files() -> list[Path]:
    """The standard library's .py files in a stable order (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):  # prune: site-packages may hold 10x the stdlib
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(files, key=lambda p: str(p.relative_to(root)))


def load_corpus(cfg: DataConfig) -> np.ndarray:
    """Concatenate the corpus as uint8 bytes, at most ``max_bytes``."""
    files = stdlib_files() if cfg.source == "stdlib" else [Path(p) for p in cfg.paths]
    chunks: list[bytes] = []
    total = 0
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= cfg.max_bytes:
            break
    buf = b"".join(chunks)[: cfg.max_bytes]
    if len(buf) < 10_000:
        raise ValueError(f"corpus too small: {len(buf)} bytes")
    return np.frombuffer(buf, dtype=np.uint8).copy()


_CACHE: dict[str, np.ndarray] = {}


def _cache_key(cfg: DataConfig) -> str:
    return f"{cfg.source}|{[str(p) for p in cfg.paths]}|{cfg.max_bytes}"


def preload_corpus(cfg: DataConfig, seq_len: int) -> None:
    """Read the corpus once in a warm parent (the node agent); forked ranks share it."""
    _CACHE[_cache_key(cfg)] = load_corpus(cfg)


@dataclass
class Corpus:
    """Train and held-out splits of one byte stream; sample i is a window at a seeded offset."""

    train: np.ndarray
    held_out: np.ndarray
    seq_len: int
    seed: int

    @classmethod
    def build(cls, cfg: DataConfig, seq_len: int) -> Corpus:
        key = _cache_key(cfg)
        data = _CACHE[key] if key in _CACHE else load_corpus(cfg)
        cut = int(len(data) * (1 - cfg.eval_fraction))
        return cls(train=data[:cut], held_out=data[cut:], seq_len=seq_len, seed=cfg.seed)

    def _window(self, split: np.ndarray, key: int, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, key, index])
        off = int(rng.integers(0, len(split) - self.seq_len - 1))
        return split[off: off + self.seq_len + 1]

    def batch(self, indices: Iterable[int], held_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for these sample indices: inputs are bytes t, targets bytes t+1."""
        split = self.held_out if held_out else self.train
        rows = np.stack([self._window(split, 1 if held_out else 0, i) for i in indices]).astype(np.int64)
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


@dataclass
class Sampler:
    """Hands out global batches of sample indices in order, never one on the skip list."""

    cursor: int = 0
    skip: set[int] = field(default_factory=set)

    def next_global_batch(self, size: int) -> list[int]:
        out: list[int] = []
        while len(out) < size:
            if self.cursor not in self.skip:
                out.append(self.cursor)
            self.cursor += 1
        return out

    def state(self) -> dict[str, object]:
        return {"cursor": self.cursor, "skip": sorted(self.skip)}

    @classmethod
    def from_state(cls, st: dict[str, object]) -> Sampler:
        return cls(cursor=int(st["cursor"]), skip=set(st["skip"]))  # type: ignore[arg-type, call-overload]


def shard(indices: list[int], dp_rank: int, dp_size: int) -> list[int]:
    """This data-parallel rank's contiguous share of a global batch."""
    per = len(indices) // dp_size
    return indices[dp_rank * per: (dp_rank + 1) * per]
