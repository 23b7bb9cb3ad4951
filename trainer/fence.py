"""Epoch fencing: a rank of an attempt the supervisor has moved on from must not write anything that counts.

Every attempt's number is its epoch. The supervisor writes the current epoch into ``RUN_DIR/EPOCH``
(atomically, fsynced) the moment it declares an attempt dead and again before the next attempt's ranks
start. The file also keeps, for each fence, the checkpoints that were committed when it was raised: a
checkpoint of an older epoch that is not in that list was committed after its epoch was declared dead
(a partitioned node that kept training) and is never loaded. Ranks check the file before every step and
right before a checkpoint commit, and exit with :data:`FENCED_EXIT` when a newer epoch exists.

The check is one ``os.stat`` per call (about a microsecond); the file is re-read only when it changed.
This module imports nothing of ours (and not torch), so the supervisor and the ranks both use it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EPOCH_FILE = "EPOCH"
FENCED_EXIT = 76  # a rank that saw a newer epoch and stopped before committing anything
STALE_PREFIX = "stale-epoch"


class Fenced(SystemExit):
    """Raised in a rank whose epoch is older than the run's: unwinds to the process exit code."""

    def __init__(self, mine: int, current: int) -> None:
        super().__init__(FENCED_EXIT)
        self.mine, self.current = mine, current

    def __str__(self) -> str:
        return f"epoch {self.mine} fenced: the run is at epoch {self.current}"


@dataclass(frozen=True)
class FenceRecord:
    """Epochs below ``epoch`` were declared dead at ``t``; ``accepted`` were committed before that."""

    epoch: int
    t: float
    accepted: tuple[str, ...]


@dataclass(frozen=True)
class EpochState:
    epoch: int
    fences: tuple[FenceRecord, ...] = ()

    def fence_for(self, epoch: int) -> FenceRecord | None:
        """The first fence that declared ``epoch`` dead (None while it is still current)."""
        return next((f for f in self.fences if f.epoch > epoch), None)

    def admits(self, ckpt_epoch: int | None, name: str) -> bool:
        """May a checkpoint named ``name`` written by ``ckpt_epoch`` be loaded?"""
        if ckpt_epoch is None:
            return True  # written before fencing existed
        fence = self.fence_for(ckpt_epoch)
        return fence is None or name in fence.accepted


def epoch_path(run_dir: Path) -> Path:
    return Path(run_dir) / EPOCH_FILE


def read_state(run_dir: Path) -> EpochState | None:
    """The run's epoch record; None when no supervisor wrote one (a bare rank in a unit test)."""
    try:
        raw = json.loads(epoch_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return _parse(raw)


def _parse(raw: dict[str, Any]) -> EpochState:
    fences = tuple(FenceRecord(int(f["epoch"]), float(f["t"]), tuple(f.get("accepted", [])))
                   for f in raw.get("fences", []))
    return EpochState(int(raw["epoch"]), fences)


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, and the rename is fsynced. Lives here, without
    torch, so that the supervisor (which never loads torch) and the checkpoint code share it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(run_dir: Path, state: EpochState) -> None:
    doc = {"epoch": state.epoch, "fences": [{"epoch": f.epoch, "t": f.t, "accepted": list(f.accepted)}
                                            for f in state.fences]}
    atomic_write(epoch_path(run_dir), json.dumps(doc).encode())


def committed_names(ckpt_root: Path) -> list[str]:
    """Names of the committed checkpoint directories now (no torch import: a plain listing)."""
    if not ckpt_root.exists():
        return []
    return sorted(p.name for p in ckpt_root.glob("step_*") if (p / "COMMITTED").exists())


def advance(run_dir: Path, epoch: int, ckpt_root: Path, now: float | None = None) -> EpochState:
    """Declare every epoch below ``epoch`` dead: list what is committed first, then write the file, so
    a commit that races the fence is left out of ``accepted`` (refused at load) rather than let in."""
    state = read_state(run_dir) or EpochState(-1)
    if epoch <= state.epoch:
        return state
    accepted = tuple(committed_names(ckpt_root))
    fences = state.fences
    if state.epoch >= 0 or accepted:
        fences = fences + (FenceRecord(epoch, time.time() if now is None else now, accepted),)
    new = EpochState(epoch, fences)
    _write(run_dir, new)
    return new


class EpochGuard:
    """A rank's view of the fence: ``check()`` raises :class:`Fenced` once a newer epoch is recorded."""

    def __init__(self, run_dir: Path | None, epoch: int) -> None:
        self.path = None if run_dir is None else epoch_path(run_dir)
        self.epoch = epoch
        self._seen: tuple[int, int] | None = None
        self.current = epoch

    def newer(self) -> int | None:
        """The recorded epoch if it is newer than ours; stat only, read when the file changed."""
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key != self._seen:
            self._seen = key
            try:
                self.current = int(json.loads(self.path.read_text())["epoch"])
            except (OSError, ValueError, KeyError):
                self._seen = None
                return None
        return self.current if self.current > self.epoch else None

    def check(self) -> None:
        current = self.newer()
        if current is not None:
            raise Fenced(self.epoch, current)


def quarantine(ckpt_dir: Path, ckpt_epoch: int) -> Path:
    """Move a stale checkpoint out of the ``step_*`` namespace: kept as evidence, never loaded, and its
    step name is free for the current epoch to write again."""
    target = ckpt_dir.with_name(f"{STALE_PREFIX}{ckpt_epoch}-{ckpt_dir.name}")
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    os.replace(ckpt_dir, target)
    return target


