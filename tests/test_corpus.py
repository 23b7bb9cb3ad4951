"""The default corpus's file list: the standard library's own sources, in a stable order.

The walk prunes site-packages (10x the stdlib on some machines, and it cost every node agent ~1 s of CPU
per run); the list must stay exactly what the unpruned definition gives, or every run's data changes."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from trainer.data import stdlib_files


def test_pruned_walk_lists_exactly_the_stdlib_sources_in_order() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    want = sorted((p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts),
                  key=lambda p: str(p.relative_to(root)))
    assert files == want and len(files) > 100
    assert not any(part in ("site-packages", "test") for p in files for part in p.relative_to(root).parts)
