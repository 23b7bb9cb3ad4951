"""``benchmarks/measured.json``: the costs our benchmarks measured, with when and on what machine.

The at-scale simulation reads its "measured" costs from here instead of constants in its source, so a
rerun of a benchmark moves the simulation with it. Each entry keeps its value, the benchmark that wrote
it, the date and the machine; a value copied from an earlier BENCHMARKS.md table says so in ``source``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import machine

PATH = Path(__file__).resolve().parent / "measured.json"


def load(path: Path = PATH) -> dict[str, dict[str, Any]]:
    """Every recorded cost by name; {} when nothing was measured yet."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.get("costs", {}).items() if isinstance(v, dict) and "value" in v}


def values(path: Path = PATH) -> dict[str, float]:
    return {k: float(v["value"]) for k, v in load(path).items()}


def record(costs: dict[str, float], source: str, path: Path = PATH) -> None:
    """Merge ``costs`` into the file (atomically), stamped with the date, machine and ``source``."""
    data: dict[str, Any] = {"costs": load(path)}
    stamp = {"source": source, "date": dt.date.today().isoformat(), "machine": machine()}
    for k, v in costs.items():
        data["costs"][k] = {"value": round(float(v), 6), **stamp}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".measured-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
