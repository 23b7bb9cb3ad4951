"""Checkpoints through torch.distributed.checkpoint, with a manifest of checksums and an atomic commit.

A checkpoint directory counts only once ``COMMITTED`` exists, and that marker is written (by rename,
then a directory fsync) after every rank's shards are on disk and ``manifest.json`` lists each file's
size and sha256. At load, rank 0 verifies the manifest; a truncated, missing or corrupted file marks the
checkpoint ``BAD`` and the next older good one is used. All ranks agree on the choice by a broadcast.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from trainer import packed_state
from trainer.dcp_reader import OnePassReader
from trainer.device import flags_tensor
from trainer.fence import atomic_write  # torch-free, so the supervisor can use it too

COMMITTED = "COMMITTED"
BAD = "BAD"
MANIFEST = "manifest.json"
EXTRA = "extra.json"


@dataclass(frozen=True)
class CheckpointRef:
    step: int
    path: Path


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(path: Path) -> dict[str, Any]:
    files = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, COMMITTED, BAD) and not p.name.startswith("."):
            files[str(p.relative_to(path))] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {"files": files, "t": time.time()}
    atomic_write(path / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def verify(path: Path) -> str | None:
    """None when the checkpoint is intact, else the reason it cannot be trusted."""
    if not (path / COMMITTED).exists():
        return "not committed"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"manifest unreadable: {exc}"
    for rel, meta in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            return f"missing file {rel}"
        if f.stat().st_size != meta["size"]:
            return f"{rel}: size {f.stat().st_size} != {meta['size']} (truncated?)"
        if sha256_file(f) != meta["sha256"]:
            return f"{rel}: checksum mismatch (corrupted)"
    return None


def committed(root: Path) -> list[CheckpointRef]:
    """Committed, not known-bad checkpoints, oldest first."""
    out = []
    if not root.exists():
        return out
    for p in root.glob("step_*"):
        if (p / COMMITTED).exists() and not (p / BAD).exists():
            try:
                out.append(CheckpointRef(int(p.name.split("_")[1]), p))
            except ValueError:
                continue
    return sorted(out, key=lambda r: r.step)


def mark_bad(path: Path, reason: str) -> None:
    atomic_write(path / BAD, reason.encode())


def apply_retention(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` good checkpoints, and stale uncommitted ones.

    The newest good checkpoint is never deleted, whatever is newer than it.
    """
    good = committed(root)
    removed: list[Path] = []
    keep_paths = {r.path for r in good[-keep:]}
    newest = good[-1].step if good else -1
    for p in root.glob("step_*"):
        try:
            step = int(p.name.split("_")[1])
        except ValueError:
            continue
        if p in keep_paths:
            continue
        is_good = (p / COMMITTED).exists() and not (p / BAD).exists()
        if (is_good and len(keep_paths) >= 1) or (not is_good and step < newest) or (p / BAD).exists():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


class CheckpointFailed(Exception):
    """A save that did not complete on every rank; the previous checkpoint is untouched."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _fresh_dir(path: Path, rank: int) -> None:
    """Rank 0 removes a stale, uncommitted attempt at this step; nobody writes before it is done."""
    if rank == 0 and path.exists():
        shutil.rmtree(path)
    if dist.is_initialized():
        dist.barrier()
    path.mkdir(parents=True, exist_ok=True)


def _write_small_files(path: Path, rank: int, extra: dict[str, Any], fault: str | None) -> OSError | None:
    """This rank's RNG state, and rank 0's extra JSON (step, sampler, precision); the error, if any.

    ``fault == "disk_full"`` injects ENOSPC at rank 0's write (the chaos test of a full disk).
    """
    try:
        torch.save(torch.get_rng_state(), path / f"rng-rank{rank}.pt")
        if rank == 0:
            if fault == "disk_full":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / EXTRA))
            atomic_write(path / EXTRA, json.dumps(extra).encode())
    except OSError as exc:
        return exc
    return None


def _agree(ok: bool) -> bool:
    """True only if every rank says ok (one all-reduce)."""
    if not dist.is_initialized():
        return ok
    t = flags_tensor([0 if ok else 1], dtype=torch.int64)  # on the group's device (NCCL: CUDA)
    dist.all_reduce(t)
    return int(t.item()) == 0


def save(root: Path, step: int, state: dict[str, Any], extra: dict[str, Any], rank: int,
         fault: str | None = None, fence: Callable[[], None] | None = None) -> float:
    """Collective save of ``state`` (a DCP state dict) plus rank 0's ``extra`` JSON; returns seconds.

    ``fault`` injects a failure: "disk_full" raises ENOSPC at rank 0's write, "ckpt_crash" kills the
    rank after its shards are written and before the commit. ``fence`` raises in a rank whose attempt
    was declared dead (trainer.fence): it runs before anything is touched and right before the commit.
    """
    t0 = time.perf_counter()
    path = step_dir(root, step)
    if (path / COMMITTED).exists():
        return 0.0
    if fence is not None:
        fence()
    _fresh_dir(path, rank)
    err: BaseException | None = None
    try:
        dcp.save(packed_state.pack(state), checkpoint_id=str(path))
        if fault == "ckpt_crash":
            os._exit(17)
    except OSError as exc:
        err = exc
    err = err or _write_small_files(path, rank, extra, fault)
    if not _agree(err is None):
        kind = "disk_full" if isinstance(err, OSError) and err.errno == errno.ENOSPC else "checkpoint_error"
        raise CheckpointFailed(kind, f"save at step {step} failed: {err or 'on another rank'}")
    if rank == 0:
        if fence is not None:
            fence()
        write_manifest(path)
        atomic_write(path / COMMITTED, f"{step}\n".encode())
    if dist.is_initialized():
        dist.barrier()
    return time.perf_counter() - t0


@dataclass
class PendingSave:
    """An async save in flight: shards are being written by DCP's thread; not committed yet."""

    step: int
    path: Path
    fut: Any
    t0: float
    blocked_s: float
    local_error: BaseException | None = None
    staging: Any = None  # background staging: the next optimizer step must wait for it

    def wait_staged(self) -> None:
        """Block until the state is copied out: only then may the optimizer change the parameters."""
        if self.staging is not None:
            self.staging.result()
            self.staging = None

    def done(self) -> bool:
        return self.fut.done()

    def failed(self) -> bool:
        if self.local_error is not None:
            return True
        return self.fut.done() and self.fut.exception() is not None


def background_stager(cuda: bool | None = None) -> Any:
    """A stager that copies the state in a background thread too, so ``async_save`` returns at once
    (measured: 9% of a synchronous save's time at 1 GB, against 230% when staging inline).

    From GPU memory (``cuda``; default: this process has initialised CUDA, i.e. the rank trains on a
    GPU) the copies go into pinned host buffers, allocated once and reused by every later save, on a
    side stream without blocking the training stream; both options need CUDA.
    """
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    cuda = torch.cuda.is_initialized() if cuda is None else cuda
    return ReusableStager(lambda: DefaultStager(StagingOptions(
        use_pinned_memory=cuda, use_shared_memory=False, use_async_staging=True, use_non_blocking_copy=cuda)))


def stager_spent(stager: Any) -> bool:
    """Whether a DefaultStager can no longer stage: torch 2.11 closes its inner copier at the end of
    every stage (pytorch#183413, fixed after 2.11), so its second save fails with ``KeyError: <class
    'type'>`` (seen on an H200 with torch 2.11: every async checkpoint after step 0 failed)."""
    inner = getattr(stager, "_state_dict_stager", None)
    return inner is not None and not getattr(inner, "_deepcopy_dispatch", True)


class ReusableStager:
    """One stager for every async save of a run (the AsyncStager protocol), which replaces its
    DefaultStager when the torch in use has spent it; with a torch that keeps it, nothing changes."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._inner = make()
        self._last: Any = None

    @property
    def should_synchronize_after_execute(self) -> bool:
        return bool(self._inner.should_synchronize_after_execute)

    def stage(self, state_dict: dict[str, Any]) -> Any:
        if hasattr(self._last, "result"):
            self._last.result()  # torch 2.11 spends the copier at the end of the previous stage
        if stager_spent(self._inner):
            self._inner.close()
            self._inner = self._make()
        self._last = self._inner.stage(state_dict)
        return self._last

    def synchronize_staging(self) -> None:
        self._inner.synchronize_staging()

    def close(self) -> None:
        self._inner.close()


class SnapshotStager:
    """For a state that is already a private CPU copy (the memory tier's snapshot of this step): nothing
    to stage, so the async save costs the training path no copy and no wait at all (the AsyncStager
    protocol of torch.distributed.checkpoint)."""

    _synchronize_after_execute = False

    @property
    def should_synchronize_after_execute(self) -> bool:
        return False

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return state_dict

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        pass


def start_async(root: Path, step: int, state: dict[str, Any], extra: dict[str, Any], rank: int,
                group: Any, fault: str | None = None, stager: Any = None) -> PendingSave | None:
    """Stage ``state`` in memory and write it in DCP's background thread; returns at once.

    Every rank calls ``dcp.async_save`` even if its own small writes failed, so that the collective
    inside the save never waits for a rank that gave up; the failure is agreed on at commit time.
    """
    t0 = time.perf_counter()
    path = step_dir(root, step)
    if (path / COMMITTED).exists():
        return None
    _fresh_dir(path, rank)
    err = _write_small_files(path, rank, extra, fault)
    resp = dcp.async_save(packed_state.pack(state), checkpoint_id=str(path), process_group=group,
                          async_stager=stager)
    if fault == "ckpt_crash":
        os._exit(17)
    if stager is None or not hasattr(resp, "upload_completion"):
        return PendingSave(step, path, resp, t0, time.perf_counter() - t0, err)
    return PendingSave(step, path, resp.upload_completion, t0, time.perf_counter() - t0, err,
                       staging=resp.staging_completion)


def commit(p: PendingSave, rank: int, fence: Callable[[], None] | None = None) -> float:
    """After every rank's write finished (agreed by the caller): manifest + COMMITTED on rank 0, unless
    ``fence`` says this attempt was declared dead (it raises)."""
    if rank == 0:
        if fence is not None:
            fence()
        write_manifest(p.path)
        atomic_write(p.path / COMMITTED, f"{p.step}\n".encode())
    return time.perf_counter() - p.t0


def choose_for_load(root: Path, rank: int, on_bad: Any = None,
                    admit: Callable[[CheckpointRef], bool] | None = None) -> CheckpointRef | None:
    """Rank 0 picks the newest checkpoint that verifies (marking bad ones); everyone gets its choice.

    ``admit`` (epoch fencing) refuses a checkpoint outright, e.g. one a dead attempt committed late.
    """
    choice: list[Any] = [None]
    if rank == 0:
        for ref in reversed(committed(root)):
            if admit is not None and not admit(ref):
                continue
            reason = verify(ref.path)
            if reason is None:
                choice[0] = (ref.step, str(ref.path))
                break
            mark_bad(ref.path, reason)
            if on_bad is not None:
                on_bad(ref, reason)
    if dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    return CheckpointRef(choice[0][0], Path(choice[0][1])) if choice[0] else None


def load(ref: CheckpointRef, state: dict[str, Any], rank: int) -> dict[str, Any]:
    """Load shards into ``state`` in place (any layout: DCP reshards); return the extra JSON.

    Scalars come from the checkpoint's packed objects (``trainer.packed_state``), or item by item from a
    checkpoint written before that format; every shard file is read once (``trainer.dcp_reader``).
    """
    reader = OnePassReader(str(ref.path))
    digests = packed_state.stored_digests(reader.read_metadata())
    if digests is None:
        dcp.load(state, storage_reader=reader)
    else:
        target = packed_state.load_target(state, digests)
        dcp.load(target, storage_reader=reader)
        packed_state.unpack_into(state, target)
    rng = ref.path / f"rng-rank{rank}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng))
    return json.loads((ref.path / EXTRA).read_text())
