"""How a rank's state becomes one memory-tier copy in a single pass, and back.

Why: the first writer cloned every tensor, ``torch.save``d the clones into a buffer, checksummed the
buffer, wrote it to /dev/shm, and the agent hashed it again to replicate it: five passes over the
state (~35 ms of CPU per rank per copy for the demo model). Here the only copy on the training path
goes straight from the live tensors into a shared mapping of the new file (``Segment``), the rest of
the state (ints, floats, the optimizer's param groups) is a small pickle after the tensors, and the
writer thread makes one HMAC pass (``trainer.memstore``). The tensors viewing the mapping are also the
private snapshot a storage checkpoint is written from.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import memstore


@dataclass(frozen=True)
class Slot:
    """Stands for the i-th tensor in the pickled rest of the state."""
    i: int


def split(v: Any, tensors: list[torch.Tensor], sharded: list[bool]) -> Any:
    """The structure of ``v`` with each tensor replaced by a Slot (a DTensor by its local shard, noted
    in ``sharded``: such a copy cannot stand in for the DTensor state in a storage checkpoint)."""
    if isinstance(v, dict):
        return {k: split(x, tensors, sharded) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        if hasattr(v, "to_local"):
            sharded[0] = True
            v = v.to_local()
        tensors.append(v.detach())
        return Slot(len(tensors) - 1)
    return v


def join(v: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(v, dict):
        return {k: join(x, tensors) for k, x in v.items()}
    return tensors[v.i] if isinstance(v, Slot) else v


def plan(tensors: list[torch.Tensor], skel: bytes) -> tuple[list[list[Any]], list[int], int]:
    """(index, [skeleton offset, length], payload size): tensors 64-byte aligned, then the pickle."""
    index, off = [], 0
    for t in tensors:
        n = t.numel() * t.element_size()
        index.append([off, n, str(t.dtype).removeprefix("torch."), list(t.shape)])
        off = memstore.align(off + n)
    return index, [off, len(skel)], off + len(skel)


def view(buf: Any, entry: list[Any]) -> torch.Tensor:
    """The tensor an index entry describes, sharing ``buf``'s memory."""
    off, n, dtype, shape = entry
    dt = getattr(torch, dtype)
    if n == 0:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(buf, dtype=dt, count=n // torch.empty((), dtype=dt).element_size(),
                            offset=off).view(shape)


class Segment:
    """A copy being written: a dot-named file in /dev/shm, mapped; the payload goes straight into it.

    The writer thread prepares the next segment (file created, pages faulted in, tensor views made)
    right after publishing one, so the training path pays only the tensor copy: allocating 10 MB of
    tmpfs pages took longer than the copy itself."""

    SLACK = 1 << 16  # room for the pickled rest to grow between copies

    def __init__(self, directory: Path, size: int, index: list[list[Any]] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f".next-{os.getpid()}-{next(_serial)}.tmp"
        self.capacity = size + (self.SLACK if index is not None else 0)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, max(self.capacity, 1))
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # one fault-in, not one per page
            self.map = mmap.mmap(fd, max(self.capacity, 1), flags=flags)
        finally:
            os.close(fd)  # the mapping outlives the descriptor (and the file's unlink, for a storage save)
        self.index = index
        self.views = [view(self.map, e) for e in index] if index is not None else None

    def fits(self, index: list[list[Any]], size: int) -> bool:
        return self.index == index and size <= self.capacity

    def fill(self, tensors: list[torch.Tensor], index: list[list[Any]], skel: bytes,
             skel_at: list[int]) -> list[torch.Tensor]:
        """The one copy on the training path; returns the copies (views of the mapping)."""
        views = self.views if self.views is not None and self.index == index else [view(self.map, e) for e in index]
        for dst, t in zip(views, tensors):
            dst.copy_(t)
        self.map[skel_at[0]:skel_at[0] + skel_at[1]] = skel
        return views

    def payload(self, size: int) -> memoryview:
        return memoryview(self.map)[:size]

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


_serial = itertools.count()


def encode(directory: Path, step: int, snap: dict[str, Any], prepared: Segment | None = None
           ) -> tuple[Segment, list[list[Any]], list[int], Any, bool]:
    """Copy ``snap`` into ``prepared`` if it fits, else a new segment: (segment, index, skeleton place,
    the snapshot as views of the segment, whether it holds DTensor shards)."""
    tensors: list[torch.Tensor] = []
    sharded = [False]
    skeleton = split(snap, tensors, sharded)
    skel = pickle.dumps(skeleton, protocol=pickle.HIGHEST_PROTOCOL)
    index, skel_at, size = plan(tensors, skel)
    seg = prepared if prepared is not None and prepared.fits(index, size) else None
    if seg is None:
        if prepared is not None:
            prepared.discard()
        seg = Segment(directory, size)
    copies = seg.fill(tensors, index, skel, skel_at)
    return seg, index, skel_at, join(skeleton, copies), sharded[0]


def decode(header: memstore.CopyHeader, payload: bytearray) -> dict[str, Any]:
    """The snapshot a checked copy holds (tensors share ``payload``: no further copy)."""
    off, n = header.skel
    skeleton = pickle.loads(payload[off:off + n])  # trusted: the payload passed the run key's HMAC
    return join(skeleton, [view(payload, e) for e in header.index])
