"""The memory tier's copies on a node: where they live, their header, and whether one may be loaded.

A copy is one file per rank and step in host shared memory (``/dev/shm``), so it outlives the rank
process that wrote it; the node agent owns the directory (created at start, removed at exit). Layout::

    BASE/<run id>/<node>/rank<R>/step_<S>.mem     this node's ranks' own copies (and ones fetched for them)
    BASE/<run id>/<node>/replica/<src>/rank<R>/…  copies a ring predecessor replicated here

File format: ``MAGIC | u32 header length | header JSON | payload``. The header carries the rank, step,
epoch, wall time of the write, world and layout, the payload's size and CRC-32. Files are written to a
dot-name and renamed, so a reader sees a whole copy or none; a torn, corrupted or stale one is refused
by :func:`check` with the reason. Stdlib only: the agent, the supervisor and the ranks all use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.fence import EpochState

MAGIC = b"ORCHMEM1"
ENV_DIR = "ORCH_MEM_DIR"
ENV_PORT = "ORCH_MEM_PORT"
BASE = Path(os.environ.get("ORCH_MEM_BASE", "/dev/shm/orch-mem"))
KEEP = 2  # copies kept per rank: the newest may be half-replicated when a fault strikes


@dataclass(frozen=True)
class CopyHeader:
    rank: int
    step: int
    epoch: int
    t: float
    world: int
    layout: str
    size: int
    crc: int
    lineage: str = ""  # "epoch.rollbacks": copies of a trajectory a rollback abandoned never mix with new ones

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


def run_id(run_dir: str | Path) -> str:
    """A short name for the run, the same on every node (derived from the run directory's path)."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def node_dir(run_dir: str | Path, node: str) -> Path:
    return BASE / run_id(run_dir) / node


def rank_dir(base: Path, rank: int) -> Path:
    return base / f"rank{rank}"


def copy_name(step: int) -> str:
    return f"step_{step:08d}.mem"


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode(header: CopyHeader, payload: bytes | memoryview) -> list[bytes | memoryview]:
    """The file's pieces (written one after the other: the payload is never copied again)."""
    head = header.to_json()
    return [MAGIC, struct.pack(">I", len(head)), head, payload]


def write_copy(directory: Path, header: CopyHeader, payload: bytes | memoryview,
               may_publish: Callable[[], bool] | None = None) -> Path | None:
    """Write to a dot-name, then rename: the copy appears whole or not at all. ``may_publish`` (the
    epoch fence) is asked right before the rename; a fenced writer leaves nothing behind."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / copy_name(header.step)
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for piece in encode(header, payload):
            f.write(piece)
    if may_publish is not None and not may_publish():
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, final)
    return final


def read_header(path: Path) -> tuple[CopyHeader, int]:
    """The header and the payload's offset; raises ValueError on anything malformed."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("bad magic (not a memory copy, or torn)")
        (n,) = struct.unpack(">I", f.read(4))
        if n > 1 << 16:
            raise ValueError("header too long")
        raw = json.loads(f.read(n))
    fields = {k: raw[k] for k in CopyHeader.__dataclass_fields__ if k in raw}
    return CopyHeader(**fields), len(MAGIC) + 4 + n


def check(path: Path, fences: EpochState | None, world: int,
          layout: str) -> tuple[CopyHeader | None, str | None, bytes]:
    """(header, None, payload) for a copy that may be loaded, else (header or None, reason, b"")."""
    try:
        header, off = read_header(path)
        data = path.read_bytes()[off:]
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        return None, f"unreadable: {exc}", b""
    if len(data) != header.size:
        return header, f"torn: {len(data)} of {header.size} bytes", b""
    if crc32(data) != header.crc:
        return header, "checksum mismatch (corrupted)", b""
    stale = stale_reason(header, fences)
    if stale:
        return header, stale, b""
    if header.world != world or header.layout != layout:
        return header, f"layout {header.layout} x{header.world} != {layout} x{world}", b""
    return header, None, data


def stale_reason(header: CopyHeader, fences: EpochState | None) -> str | None:
    """Fencing: a copy an epoch wrote after that epoch was declared dead is never loaded."""
    if fences is None:
        return None
    if header.epoch > fences.epoch:
        return f"stale: epoch {header.epoch} is newer than the run's {fences.epoch}"
    fence = fences.fence_for(header.epoch)
    if fence is not None and header.t > fence.t:
        return f"stale: epoch {header.epoch} wrote it after its fence"
    return None


def list_copies(directory: Path) -> list[Path]:
    """Published copies (no dot-names), newest step first."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.glob("step_*.mem")), reverse=True)


def prune(directory: Path, keep: int = KEEP) -> None:
    """Keep the ``keep`` most recently written copies (not the highest steps: after a rollback the new
    trajectory's lower steps are the ones to keep)."""
    def written(p: Path) -> int:
        try:
            return p.stat().st_mtime_ns
        except OSError:
            return 0
    for p in sorted(list_copies(directory), key=written, reverse=True)[keep:]:
        p.unlink(missing_ok=True)


def wipe(path: Path) -> None:
    """A node's memory is gone (agent start, exit, or a lost node in the local simulation)."""
    shutil.rmtree(path, ignore_errors=True)


def describe(header: CopyHeader | None) -> dict[str, Any]:
    return {} if header is None else {"step": header.step, "epoch": header.epoch, "rank": header.rank}
