"""The memory tier's copies on a node: where they live, their layout, and whether one may be loaded.

A copy is one file per rank and step in host shared memory (``/dev/shm``), so it outlives the rank
process that wrote it; the node agent owns the directory (created at start, removed at exit). Layout::

    BASE/<run id>/<node>/rank<R>/step_<S>.mem     this node's ranks' own copies (and ones fetched for them)
    BASE/<run id>/<node>/replica/<src>/rank<R>/…  copies a ring predecessor replicated here

File format (a trailer, so the payload starts at offset 0 and the rank can copy tensors straight into a
mapping of the file): ``payload | header JSON | u32 header length | MAGIC``. The payload is the
tensors' raw bytes (64-byte aligned, each listed in the header's ``index``) followed by a small pickle of
everything else. The header carries the rank, step, epoch, wall time of the write, world and layout,
and ``tag``: one HMAC-SHA256 under the run key over payload and header. That single pass is both the
checksum (a torn or corrupted copy is refused) and the proof of origin (a copy another run or user
wrote, or a replica altered in flight, is refused): the agents replicate files without hashing them
again. Files are written to a dot-name and renamed, so a reader sees a whole copy or none; a torn,
corrupted or stale one is refused by :func:`check` with the reason. Stdlib only: the agent, the
supervisor and the ranks all use it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mmap
import os
import shutil
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trainer.fence import EpochState

MAGIC = b"ORCHMEM2"
DOMAIN = b"orchmem-copy2"
TRAILER = 4 + len(MAGIC)
MAX_HEADER = 1 << 24
ALIGN = 64
ENV_DIR = "ORCH_MEM_DIR"
ENV_PORT = "ORCH_MEM_PORT"
BASE = Path(os.environ.get("ORCH_MEM_BASE", "/dev/shm/orch-mem"))
KEEP = 2  # copies always kept per rank: the newest may be half-replicated when a fault strikes
MAX_KEEP = 6  # the most kept per rank (own or replica) while replication lags: bounds /dev/shm (see prune)
UNKNOWN = -1  # retain-from step while some ring node has acknowledged no copy yet: keep up to MAX_KEEP
RETAIN = "retain.json"  # in a node's directory: the oldest step its copies must keep (the agent writes it)


@dataclass(frozen=True)
class CopyHeader:
    rank: int
    step: int
    epoch: int
    t: float
    world: int
    layout: str
    size: int  # payload bytes
    tag: str = ""  # hex HMAC-SHA256 (run key) over payload + this header with tag ""
    lineage: str = ""  # "epoch.rollbacks": copies of a trajectory a rollback abandoned never mix with new ones
    index: list[list[Any]] = field(default_factory=list)  # per tensor: [offset, nbytes, dtype, shape]
    skel: list[int] = field(default_factory=lambda: [0, 0])  # [offset, length] of the pickled rest

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


def run_id(run_dir: str | Path) -> str:
    """A short name for the run, the same on every node (derived from the run directory's path)."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def node_dir(run_dir: str | Path, node: str) -> Path:
    return BASE / run_id(run_dir) / node


def rank_dir(base: Path, rank: int) -> Path:
    return base / f"rank{rank}"


def copy_name(step: int) -> str:
    return f"step_{step:08d}.mem"


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def compute_tag(key: bytes, header: CopyHeader, payload: bytes | memoryview | mmap.mmap) -> str:
    """The one pass over the payload: HMAC-SHA256 under the run key (b"" without one: a checksum only)."""
    m = hmac.new(key, DOMAIN, hashlib.sha256)
    m.update(payload)
    m.update(replace(header, tag="").to_json())
    return m.hexdigest()


def sealed(key: bytes, header: CopyHeader, payload: bytes | memoryview | mmap.mmap) -> CopyHeader:
    return replace(header, tag=compute_tag(key, header, payload))


def trailer(header: CopyHeader) -> bytes:
    head = header.to_json()
    return head + struct.pack(">I", len(head)) + MAGIC


def tmp_path(directory: Path, step: int) -> Path:
    return directory / f".{copy_name(step)}.{os.getpid()}.tmp"


def publish(tmp: Path, header: CopyHeader, may_publish: Callable[[], bool] | None = None) -> Path | None:
    """Append the trailer to a written payload and rename it into place. ``may_publish`` (the epoch
    fence) is asked right before the rename; a fenced writer leaves nothing behind."""
    with open(tmp, "r+b") as f:
        f.seek(header.size)
        f.write(trailer(header))
        f.truncate()
    if may_publish is not None and not may_publish():
        tmp.unlink(missing_ok=True)
        return None
    final = tmp.parent / copy_name(header.step)
    os.replace(tmp, final)
    return final


def write_copy(directory: Path, header: CopyHeader, payload: bytes | memoryview,
               may_publish: Callable[[], bool] | None = None) -> Path | None:
    """A copy of an in-memory payload (``header`` already sealed), written whole or not at all."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(directory, header.step)
    with open(tmp, "wb") as f:
        f.write(payload)
    return publish(tmp, header, may_publish)


def _parse_trailer(tail: bytes, file_size: int) -> tuple[int, int]:
    """(header offset, header length) from the file's last bytes; ValueError if torn or foreign."""
    if len(tail) < TRAILER or tail[-len(MAGIC):] != MAGIC:
        raise ValueError("torn: no trailer (a partly written or truncated copy)")
    (n,) = struct.unpack(">I", tail[-TRAILER:-len(MAGIC)])
    if n > MAX_HEADER or n + TRAILER > file_size:
        raise ValueError("torn: header length out of range")
    return file_size - TRAILER - n, n


def _header_from(raw: bytes) -> CopyHeader:
    data = json.loads(raw)
    return CopyHeader(**{k: data[k] for k in CopyHeader.__dataclass_fields__ if k in data})


def read_header(path: Path) -> CopyHeader:
    """The header alone (the agent's pusher); raises ValueError on anything malformed."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - TRAILER))
        off, n = _parse_trailer(f.read(TRAILER), size)
        f.seek(off)
        return _header_from(f.read(n))


def check(path: Path, fences: EpochState | None, world: int, layout: str, key: bytes = b"",
          any_world: bool = False) -> tuple[CopyHeader | None, str | None, bytearray]:
    """(header, None, payload) for a copy that may be loaded, else (header or None, reason, empty).
    ``any_world``: a replicated layout (every rank holds the whole state) may load a copy written at
    another world size (resharding from memory after a shrink)."""
    try:
        with open(path, "rb") as f:
            raw = bytearray(os.fstat(f.fileno()).st_size)
            got = f.readinto(raw)
        off, n = _parse_trailer(bytes(raw[-TRAILER:]), got)
        header = _header_from(bytes(raw[off:off + n]))
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        reason = str(exc) if str(exc).startswith("torn") else f"unreadable: {exc}"
        return None, reason, bytearray()
    if header.size != off:
        return header, f"torn: {off} payload bytes of {header.size}", bytearray()
    del raw[off:]  # the payload alone, no second copy
    if not hmac.compare_digest(compute_tag(key, header, raw), header.tag):
        return header, "checksum mismatch (corrupted, or not written under this run's key)", bytearray()
    stale = stale_reason(header, fences)
    if stale:
        return header, stale, bytearray()
    if header.layout != layout or (header.world != world and not any_world):
        return header, f"layout {header.layout} x{header.world} != {layout} x{world}", bytearray()
    return header, None, raw


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


def step_of(path: Path) -> int:
    return int(path.name[5:13])


def write_retain(base: Path, from_step: int | None) -> None:
    """The agent's retention watermark for this node's copies (None: no replication, the file goes)."""
    if from_step is None:
        (base / RETAIN).unlink(missing_ok=True)
        return
    tmp = base / f".{RETAIN}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps({"from_step": from_step}))
    os.replace(tmp, base / RETAIN)


def read_retain(base: Path) -> int | None:
    """The oldest step to keep (:data:`UNKNOWN`: all, up to MAX_KEEP), or None without replication."""
    try:
        return int(json.loads((base / RETAIN).read_text())["from_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prune(directory: Path, keep_from: int | None = None) -> None:
    """Keep the KEEP most recently written copies (not the highest steps: after a rollback the new
    trajectory's lower steps are the ones to keep), and, while replication lags, the next ones back to
    step ``keep_from``: the newest step every ring node has replicated, so whichever node is lost, its
    partner's replica is a step every other rank still holds. Never more than MAX_KEEP: a partner that
    stops acknowledging costs at most MAX_KEEP copies per rank, then the storage tier covers it."""
    def written(p: Path) -> int:
        try:
            return p.stat().st_mtime_ns
        except OSError:
            return 0
    copies = sorted(list_copies(directory), key=written, reverse=True)
    if keep_from is not None and copies and keep_from > step_of(copies[0]):
        # Within one trajectory the ring's replicated step never passes the newest copy written; one
        # that does was the trajectory a rollback abandoned (the ring has not reported the new one
        # yet): keep up to MAX_KEEP until it has, or a node lost now resumes from storage.
        keep_from = UNKNOWN
    kept = KEEP
    while keep_from is not None and kept < min(len(copies), MAX_KEEP) and step_of(copies[kept]) >= keep_from:
        kept += 1
    for p in copies[kept:]:
        p.unlink(missing_ok=True)


def wipe(path: Path) -> None:
    """A node's memory is gone (agent start, exit, or a lost node in the local simulation)."""
    shutil.rmtree(path, ignore_errors=True)


def describe(header: CopyHeader | None) -> dict[str, Any]:
    return {} if header is None else {"step": header.step, "epoch": header.epoch, "rank": header.rank}
