"""The memory tier, rank side: a copy of this rank's shard in host shared memory every few steps.

Why: a storage checkpoint every N steps costs up to N steps of recomputation per fault; a copy in RAM
owned by the node agent survives the rank (crash, hang, kill) and costs only a tensor copy on the
training path. ``snapshot`` copies the state (model, optimizer, loop state, RNG) straight into a
mapping of the new file in /dev/shm (``trainer.memlayout``: one copy) and returns; a writer thread
makes the one HMAC pass and publishes it atomically (``trainer.memstore``), unless the epoch was
fenced meanwhile. At most one copy is in flight: the next snapshot first waits for the previous write,
so a copy is never more than one interval behind. ``choose`` is collective: every rank lists the copies
it can load, and the newest step that every rank has wins.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
import torch.distributed as dist

from trainer import memlayout, memstore
from trainer.fence import EpochGuard, read_state


def copy_into(target: Any, saved: Any) -> Any:
    """Put ``saved`` values into ``target`` (tensors in place, so DTensor shards keep their mesh)."""
    if isinstance(target, dict):
        return {k: copy_into(target[k], saved[k]) if k in target else saved[k] for k in saved}
    if isinstance(target, torch.Tensor):
        local = target.to_local() if hasattr(target, "to_local") else target
        local.detach().copy_(saved)
        return target
    return saved


ShardKey = Callable[[int, int], Hashable]  # (rank, world) -> which shard of the state that rank holds


def whole_state(rank: int, world: int) -> Hashable:
    """Plain data parallelism: every rank holds the same, whole state."""
    return ()


@dataclass
class Chosen:
    step: int
    header: memstore.CopyHeader
    payload: bytearray


class MemoryTier:
    """This rank's copies in ``base/rank<R>`` (a node-agent-owned directory in /dev/shm)."""

    def __init__(self, base: Path, rank: int, world: int, layout: str, guard: EpochGuard,
                 run_dir: Path | None, tel: Any, key: bytes | None = None, replicated: bool = False,
                 shard_key: ShardKey = whole_state) -> None:
        self.dir = memstore.rank_dir(base, rank)
        self.rank, self.world, self.layout, self.guard = rank, world, layout, guard
        self.run_dir, self.tel = run_dir, tel
        self.key = key or b""  # the run key: a copy another run or user wrote never verifies
        self.replicated = replicated  # every dp replica holds the same shard: copies reshard to any dp
        self.shard_key = shard_key  # which shard a rank holds (its pp and tp coordinates in a hybrid layout)
        self.published_step: int | None = None
        self.rollbacks = 0
        self.lineage = f"{guard.epoch}.0"  # same on every rank: rollbacks are collective
        self.last_state: tuple[int, dict[str, Any]] | None = None  # the newest snapshot, for storage
        self.last_block_s = 0.0  # tensor copy + wait for the previous write: the training path's cost
        self.last_write_s = 0.0  # HMAC + trailer + rename, in the writer thread
        self._thread: threading.Thread | None = None
        self._next: memlayout.Segment | None = None  # the next copy's file, prepared by the writer thread
        self.dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.dir.glob(".*.tmp"):  # torn leftovers of a writer killed mid-copy
            tmp.unlink(missing_ok=True)

    # ---- writing ---------------------------------------------------------------------------------
    def snapshot(self, step: int, state: dict[str, Any], extra: dict[str, Any]) -> float:
        """Copy the state now and publish it in the background; returns the seconds this blocked."""
        t0 = time.perf_counter()
        self.wait()
        try:
            seg, index, skel, copy, sharded = memlayout.encode(
                self.dir, step, {"state": state, "extra": extra, "rng": torch.get_rng_state()}, self._next)
            self._next = None
        except OSError as exc:  # /dev/shm full: the storage tier still covers us
            self.tel.event("memory_copy_failed", step=step, detail=str(exc)[:300])
            return time.perf_counter() - t0
        self.last_state = None if sharded else (step, copy["state"])
        header = memstore.CopyHeader(rank=self.rank, step=step, epoch=self.guard.epoch, t=0.0, world=self.world,
                                     layout=self.layout, size=skel[0] + skel[1], lineage=self.lineage,
                                     index=index, skel=skel)
        self._thread = threading.Thread(target=self._write, args=(seg, header), daemon=True,
                                        name="memtier-writer")
        self._thread.start()
        self.last_block_s = time.perf_counter() - t0
        return self.last_block_s

    def state_at(self, step: int) -> dict[str, Any] | None:
        """This step's snapshot (a private CPU copy, plain tensors only), for a storage save from it."""
        if self.last_state is not None and self.last_state[0] == step:
            return self.last_state[1]
        return None

    def take_block_s(self) -> float:
        """The last snapshot's blocking seconds, once (the step message after it reports them)."""
        secs, self.last_block_s = self.last_block_s, 0.0
        return secs

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self, seg: memlayout.Segment, header: memstore.CopyHeader) -> None:
        """The one pass over the copy (its HMAC), then the trailer and the rename, unless fenced."""
        t0 = time.perf_counter()
        try:
            header = memstore.sealed(self.key, replace(header, t=time.time()), seg.payload(header.size))
            if memstore.publish(seg.path, header, lambda: self.guard.newer() is None) is not None:
                self.published_step = header.step
                memstore.prune(self.dir, memstore.read_retain(self.dir.parent))  # the agent's watermark
        except OSError as exc:  # /dev/shm full: the storage tier still covers us
            seg.discard()
            self.tel.event("memory_copy_failed", step=header.step, detail=str(exc)[:300])
        self.last_write_s = time.perf_counter() - t0
        try:  # off the training path: the next copy's file, pages and views (same layout expected)
            self._next = memlayout.Segment(self.dir, header.size, header.index)
        except OSError:
            self._next = None

    def discard_all(self) -> None:
        """After a rollback, copies of the abandoned trajectory must never be restored."""
        self.wait()
        for p in memstore.list_copies(self.dir):
            p.unlink(missing_ok=True)
        self.published_step = None
        self.rollbacks += 1  # and the partner's replicas of them: a new lineage never matches theirs
        self.lineage = f"{self.guard.epoch}.{self.rollbacks}"

    # ---- restoring -------------------------------------------------------------------------------
    def _loadable(self) -> dict[tuple[int, str], Chosen]:
        """Copies this rank may load ((step, lineage) → copy); each refused one is reported with why."""
        fences = read_state(self.run_dir) if self.run_dir is not None else None
        out: dict[tuple[int, str], Chosen] = {}
        for path in memstore.list_copies(self.dir):
            if not self._same_shard(path):
                continue  # another shard of the state, written before the world changed: not ours to load
            header, reason, payload = memstore.check(path, fences, self.world, self.layout, self.key,
                                                     any_world=self.replicated)
            if reason is None and header is not None:
                out[(header.step, header.lineage)] = Chosen(header.step, header, payload)
                continue
            self.tel.event("memory_copy_bad", path=str(path), reason=reason, tier="memory",
                           **memstore.describe(header))
            path.unlink(missing_ok=True)
        if self.replicated:
            self._add_resharded(out, fences)
        return out

    def _same_shard(self, path: Path) -> bool:
        """A copy written at another world size holds this rank's shard only if the writer had the same
        pp and tp coordinates (dp replicas hold the same shard); at this world size it is this rank's."""
        if not self.replicated:
            return True  # check() refuses other world sizes, with the reason
        try:
            seen = memstore.read_header(path)
        except (OSError, ValueError, KeyError, TypeError):
            return True  # check() reports it
        return seen.world == self.world or self.shard_key(seen.rank, seen.world) == self.shard_key(
            self.rank, self.world)

    def _add_resharded(self, out: dict[tuple[int, str], Chosen], fences: Any) -> None:
        """After a shrink (or growth) of the dp dimension of a layout whose dp replicas hold the same
        shard (DDP: the whole state; DDP over tp/pp: one tp/pp shard), an old rank's copy of the same
        shard on this node will do: new ranks whose own directory has none load one of those (read only:
        they are other ranks' files). Copies of this world size are never borrowed (same-world restores
        stay exact, RNG included)."""
        for d in sorted(self.dir.parent.glob("rank*")):
            if d == self.dir:
                continue
            for path in memstore.list_copies(d):
                try:
                    seen = memstore.read_header(path)
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                if seen.world == self.world or (seen.step, seen.lineage) in out or not self._same_shard(path):
                    continue
                header, reason, payload = memstore.check(path, fences, self.world, self.layout, self.key,
                                                         any_world=True)
                if reason is None and header is not None:
                    out[(header.step, header.lineage)] = Chosen(header.step, header, payload)

    def choose(self) -> Chosen | None:
        """Collective: the newest step every rank holds a loadable copy of, of one lineage, or None."""
        mine = self._loadable()
        held: list[Any] = [sorted(mine)]
        if dist.is_initialized():
            held = [None] * dist.get_world_size()
            dist.all_gather_object(held, sorted(mine))
        common = set.intersection(*({tuple(k) for k in h} for h in held)) if held else set()
        if not common:
            return None
        return mine[max(common)]


def load_payload(chosen: Chosen) -> dict[str, Any]:
    """The snapshot in a chosen copy: {"state", "extra", "rng"}."""
    return memlayout.decode(chosen.header, chosen.payload)
