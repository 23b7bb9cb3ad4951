"""Which rank of a hung attempt is stuck outside a collective: every rank dumps its stack (faulthandler
on SIGUSR1, sent by the launcher: through the scheduler on Slurm, never to a pid another host reported)
into its log, and the single rank whose training thread is not in a collective is the culprit."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from orchestrator.attempt import AttemptWatch
from orchestrator.launcher.base import Launcher
from orchestrator.triage import Candidate
from spec.layout import rank_log_name


def attribute_hang(c: Candidate, w: AttemptWatch, launcher: Launcher) -> Candidate:
    """``c`` with the culprit rank and node filled in, when exactly one rank is outside a collective."""
    culprit = hang_culprit(lambda: launcher.dump_stacks(dict(w.pids)), sorted(w.rank_node), w.spec.log_dir,
                           w.rank_node)
    if culprit is None:
        return c
    c.rank, c.node = culprit, w.rank_node.get(culprit)
    c.evidence["detail"] = str(c.evidence.get("detail", "")) + f"; rank {culprit} is not in a collective"
    return c


COLLECTIVE_MARKS = ("distributed", "all_reduce", "barrier", "backward", "broadcast", "wait")


def hang_culprit(dump: Callable[[], bool], ranks: list[int], log_dir: Path,
                 rank_node: dict[int, str]) -> int | None:
    """Have every rank dump its stack into its log (``dump``) and find the single rank stuck outside a
    collective; None when not every rank answers within a few seconds or the answer is not unique."""
    import time as _t
    sizes = {}
    for rank in ranks:
        log = log_dir / rank_log_name(rank_node.get(rank), rank)
        sizes[rank] = log.stat().st_size if log.exists() else 0
    if not dump():
        return None
    deadline = _t.time() + 1.5
    outside: list[int] = []
    pending = set(ranks)
    while pending and _t.time() < deadline:
        for rank in list(pending):
            log = log_dir / rank_log_name(rank_node.get(rank), rank)
            text = _read_from(log, sizes[rank])
            main = _main_thread_stack(text)
            if main is None:
                continue
            pending.discard(rank)
            if not any(m in main for m in COLLECTIVE_MARKS):
                outside.append(rank)
        _t.sleep(0.02)
    return outside[0] if len(outside) == 1 else None


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _main_thread_stack(text: str) -> str | None:
    """The 'most recent call first' block of the thread that runs the training loop, once complete."""
    blocks = re.split(r"[Tt]hread 0x", text)
    for b in blocks:
        if "rank_main.py" in b and "line" in b:
            return b
    return None
