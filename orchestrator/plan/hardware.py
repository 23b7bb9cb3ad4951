"""The accelerator table (``orchestrator/data/gpus.yaml``): memory, peak FLOP/s, NVLink domain.

Kept as data, not code, so a new GPU is one YAML entry with its datasheet named in ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

GPU_TABLE = Path(__file__).resolve().parent.parent / "data" / "gpus.yaml"
GIB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator type; ``memory_bytes`` is the datasheet capacity (GiB)."""

    name: str
    memory_gib: float
    bf16_dense_flops: float
    nvlink_domain: int
    gpus_per_node: int
    source: str

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    return {"aliases": data.get("aliases") or {}, "gpus": data.get("gpus") or {}}


def gpu_names(path: Path = GPU_TABLE) -> list[str]:
    """Every accepted --gpu-type spelling (entries and aliases), for help text and error messages."""
    table = _load(str(path))
    return sorted(set(table["gpus"]) | set(table["aliases"]))


def get_gpu(name: str, path: Path = GPU_TABLE) -> GpuSpec:
    """Look a GPU up by name or alias; an unknown name raises KeyError listing the known ones."""
    table = _load(str(path))
    key = name.strip().lower()
    key = table["aliases"].get(key, key)
    entry = table["gpus"].get(key)
    if entry is None:
        raise KeyError(f"unknown GPU type {name!r}; known: {', '.join(gpu_names(path))}")
    return GpuSpec(name=key, memory_gib=float(entry["memory_gib"]),
                   bf16_dense_flops=float(entry["bf16_dense_flops"]),
                   nvlink_domain=int(entry["nvlink_domain"]), gpus_per_node=int(entry["gpus_per_node"]),
                   source=str(entry["source"]))
