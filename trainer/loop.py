"""The training loop of one rank: step, in-step guard, in-process rollback, checkpoints, evaluation.

Recovery tiers 1 and 2 live here. A NaN/Inf or a spike makes every rank agree (one all-reduce), skip
the update and put the batch on the skip list; ``max_consecutive_bad`` bad steps in a row roll every
rank back to the last good checkpoint and skip the window that led there (the PaLM recipe). The step
counter counts applied updates only, so a run always applies exactly ``train.steps`` of them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from health.detectors.loss_rules import LossVerdict, judge_step, params_from_rule
from health.detectors.precision import audit_precision
from spec.config import RunConfig
from trainer import checkpoint as ckpt
from trainer.chaos import Chaos
from trainer.data import Corpus, Sampler, shard
from trainer.samples import eval_samples
from trainer import preempt
from trainer.engine import Engine, agree_with_counts, all_ranks_agree
from trainer.fence import EpochGuard, Fenced, quarantine, read_state
from trainer.replay import Replayer
from trainer.intervals import Intervals
from trainer.memtier import MemoryTier, load_payload
from trainer.schedule import lr_factor
from trainer.telemetry import Telemetry


MAX_ROLLBACKS_TO_SAME = 2


def _exc(fut: Any) -> BaseException | None:
    return fut.exception() if fut.done() else None


def _is_enospc(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (DCP wraps the writer's errors)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass
class LoopState:
    """Everything besides model and optimizer that a checkpoint must restore."""

    step: int = 0
    sampler: Sampler = field(default_factory=Sampler)
    good_losses: list[float] = field(default_factory=list)

    def to_extra(self, precision: str, dtypes: dict[str, str], epoch: int | None = None) -> dict[str, Any]:
        return {"step": self.step, "sampler": self.sampler.state(), "good_losses": self.good_losses,
                "precision": precision, "dtypes": dtypes, "epoch": epoch}

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> LoopState:
        return cls(step=int(extra["step"]), sampler=Sampler.from_state(extra["sampler"]),
                   good_losses=list(extra["good_losses"]))


class TrainLoop:
    def __init__(self, cfg: RunConfig, engine: Engine, corpus: Corpus, tel: Telemetry, chaos: Chaos,
                 ckpt_root: Path, rank: int, world: int = 1, ckpt_group: Any = None,
                 guard: EpochGuard | None = None, mem: MemoryTier | None = None) -> None:
        self.cfg, self.engine, self.corpus, self.tel, self.chaos = cfg, engine, corpus, tel, chaos
        self.guard = guard or EpochGuard(None, tel.attempt)  # epoch fencing (trainer.fence)
        self.root, self.rank, self.world = ckpt_root, rank, world
        self.ckpt_group = ckpt_group  # a separate gloo group: async saves never share the training one
        self.pending: ckpt.PendingSave | None = None
        self.stager: Any = None  # created on the first async save, closed at the end of the run
        self.spike = params_from_rule(cfg.policy.spike)
        self.st = LoopState()
        self.bad_run: list[list[int]] = []  # sample indices of consecutive bad steps
        self.rollbacks_to: dict[int, int] = {}  # checkpoint step → rollbacks that landed there
        self.ema_step_s = 0.0
        self.preempt_agreed = False  # a preemption/time-limit signal, agreed by every rank at one step
        self.replay = Replayer(cfg, engine, corpus, chaos, tel, rank, self.guard)  # data, node or model?
        self.mem = mem  # the memory tier (trainer.memtier): restored before storage
        self.intervals = Intervals(cfg.checkpoint, self.guard.path.parent if self.guard.path else None, rank)

    # ---- restore / checkpoint -------------------------------------------------------------
    def restore(self) -> int | None:
        """Load the newest good checkpoint, if any; returns its step."""
        with self.phase("restore"):
            return self._restore()

    def _restore(self) -> int | None:
        self.finish_pending()
        if self.mem is not None and (step := self._restore_memory()) is not None:
            return step

        def on_bad(ref: ckpt.CheckpointRef, reason: str) -> None:
            self.tel.event("checkpoint_bad", step=ref.step, path=str(ref.path), reason=reason)
        ref = ckpt.choose_for_load(self.root, self.rank, on_bad, self._admit)
        if ref is None:
            return None
        t0 = time.perf_counter()
        state = self.engine.state_dict()
        extra = ckpt.load(ref, state, self.rank)
        self.engine.load_state_dict(state)
        self._audit(extra.get("dtypes", {}), extra.get("precision"), ref.step)
        skip = self.st.sampler.skip
        self.st = LoopState.from_extra(extra)
        self.st.sampler.skip |= skip
        self.tel.event("checkpoint_loaded", step=ref.step, load_s=time.perf_counter() - t0, tier="storage")
        return ref.step

    def _restore_memory(self) -> int | None:
        """Collective: the newest memory copy every rank holds, if no storage checkpoint is newer."""
        assert self.mem is not None
        t0 = time.perf_counter()
        chosen = self.mem.choose()
        good = ckpt.committed(self.root)
        use: list[Any] = [chosen is not None and (not good or chosen.step >= good[-1].step)]
        if dist.is_initialized():
            dist.broadcast_object_list(use, src=0)  # rank 0's listing of storage decides for all
        if not use[0] or chosen is None:
            return None
        snap = load_payload(chosen)
        self.engine.load_memory_state(snap["state"])
        torch.set_rng_state(snap["rng"])
        skip = self.st.sampler.skip
        self.st = LoopState.from_extra(snap["extra"])
        self.st.sampler.skip |= skip
        self.tel.event("checkpoint_loaded", step=chosen.step, load_s=time.perf_counter() - t0, tier="memory",
                       from_world=chosen.header.world)  # != world: resharded from memory after a shrink
        return chosen.step

    def snapshot_memory(self) -> None:
        """Every ``checkpoint.memory.every_steps``: this rank's shard into its node's RAM."""
        if self.mem is None or self.st.step % self.intervals.memory:
            return
        extra = self.st.to_extra(self.cfg.train.precision, {}, self.guard.epoch)
        self.mem.snapshot(self.st.step, self.engine.memory_state(), extra)

    def _admit(self, ref: ckpt.CheckpointRef) -> bool:
        """Refuse (and move aside) a checkpoint its epoch committed after being declared dead."""
        if self.guard.path is None:
            return True
        state = read_state(self.guard.path.parent)
        if state is None:
            return True
        try:
            epoch = json.loads((ref.path / ckpt.EXTRA).read_text()).get("epoch")
        except (OSError, ValueError):
            return True  # unreadable: verify() decides
        if state.admits(None if epoch is None else int(epoch), ref.path.name):
            return True
        moved = quarantine(ref.path, int(epoch))
        self.tel.event("stale_checkpoint", step=ref.step, epoch=epoch, path=str(moved),
                       fenced_at=state.fence_for(int(epoch)).t)  # type: ignore[union-attr]
        return False

    def save_checkpoint(self, blocking: bool = False) -> None:
        """Save now: synchronously, or (checkpoint.async_save) stage and let DCP write in the
        background; an async save is committed later, once every rank reports its write done."""
        with self.phase("checkpoint"):
            self._save_checkpoint(blocking)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Tell the supervisor (in heartbeats) what this rank is doing while it makes no step."""
        prev, self.tel.phase = self.tel.phase, name
        try:
            yield
        finally:
            self.tel.phase = prev

    def _audit(self, dtypes: dict[str, str], previous: str | None, step: int) -> None:
        """Precision audit (LLM360 hit both): stored dtypes must match train.precision (fp32 master
        weights and optimizer state under mixed precision), and precision must not change mid-run."""
        if self.rank != 0:
            return
        for f in audit_precision(dtypes, self.cfg.train.precision, previous)[:5]:
            self.tel.event("precision", step=step, finding=f.kind, tensor=f.tensor, detail=f.detail)

    def _save_checkpoint(self, blocking: bool) -> None:
        self.finish_pending()
        dtypes = self.engine.tensor_dtypes()
        if self.st.step == 0:
            self._audit(dtypes, None, 0)
        extra = self.st.to_extra(self.cfg.train.precision, dtypes, self.guard.epoch)
        fault = self.chaos.during_checkpoint(self.st.step)
        self.guard.check()
        if self.ckpt_group is not None and not blocking:
            copy = self.mem.state_at(self.st.step) if self.mem is not None else None
            snap = self.engine.storage_form(copy) if copy is not None else None
            if snap is not None:  # from the memory tier's copy of this step: no second copy, no wait
                self.pending = ckpt.start_async(self.root, self.st.step, snap, extra, self.rank,
                                                self.ckpt_group, fault, ckpt.SnapshotStager())
                return
            if self.stager is None:
                self.stager = ckpt.background_stager()
            self.pending = ckpt.start_async(self.root, self.st.step, self.engine.state_dict(), extra,
                                            self.rank, self.ckpt_group, fault, self.stager)
            return
        try:
            secs = ckpt.save(self.root, self.st.step, self.engine.state_dict(), extra, self.rank, fault,
                             fence=self.guard.check)
        except ckpt.CheckpointFailed as exc:
            self._checkpoint_failed(self.st.step, exc.kind, str(exc))
            return
        self._committed(self.st.step, secs, secs)

    def _committed(self, step: int, blocked_s: float, total_s: float) -> None:
        if self.rank == 0:
            ckpt.apply_retention(self.root, self.cfg.checkpoint.keep)
            self.tel.event("checkpoint", step=step, save_s=blocked_s, total_s=total_s,
                           path=str(ckpt.step_dir(self.root, step)))

    def _checkpoint_failed(self, step: int, kind: str, detail: str) -> None:
        if self.rank == 0:
            self.tel.event("checkpoint_failed", step=step, fault=kind, detail=detail)

    def pending_counts(self) -> tuple[float, float]:
        """(my async write is done, it failed): summed over ranks by the step's one all-reduce."""
        p = self.pending
        if p is None:
            return (1.0, 0.0)
        return (1.0 if p.done() else 0.0, 1.0 if p.failed() else 0.0)

    def settle_pending(self, done: float, failed: float) -> None:
        """Commit (or drop) the async save once every rank's write is done."""
        p = self.pending
        if p is None or done < self.world:
            return
        self.pending = None
        if failed > 0:
            kind = "disk_full" if _is_enospc(p.local_error) or _is_enospc(_exc(p.fut)) else "checkpoint_error"
            self._checkpoint_failed(p.step, kind, f"async save at step {p.step} failed")
            return
        total = ckpt.commit(p, self.rank, fence=self.guard.check)
        self._committed(p.step, p.blocked_s, total)

    def finish_pending(self) -> None:
        """Block until the async save in flight is written, then commit it (all ranks)."""
        if self.pending is None:
            return
        try:
            self.pending.fut.result()
        except Exception:  # noqa: BLE001 - reported through the agreement below
            pass
        _, _, sums = agree_with_counts(0.0, 0.0, False, self.pending_counts())
        self.settle_pending(*sums)

    # ---- one step ---------------------------------------------------------------------------
    def _lr(self) -> float:
        t = self.cfg.train
        return t.lr * lr_factor(self.st.step, t.steps, t.schedule, t.lr)

    def _straggle(self, step: int) -> float:
        """Injected slowness: sleep so this rank's own step takes ``slowdown`` times as long."""
        factor = self.chaos.straggle_factor(step)
        if factor <= 1.0:
            return 0.0
        extra = (factor - 1.0) * max(self.ema_step_s, 0.01)
        time.sleep(extra)
        return extra

    def train_step(self) -> bool:
        """Run one batch; True if the update was applied."""
        step = self.st.step
        idx = self.st.sampler.next_global_batch(self.cfg.train.global_batch)
        t0, t_wall = time.perf_counter(), time.time()
        self.chaos.at_step_start(step)
        x, y = self.chaos.corrupt_batch(step, *self.replay.batch(step, idx))
        slept = self._straggle(step)
        ckpt_wait_s = 0.0
        if self.cfg.train.step_sleep_s:
            time.sleep(self.cfg.train.step_sleep_s)
        pre_s = time.perf_counter() - t0  # data, injected slowness
        loss = self.engine.forward_backward(x, y, poison=self.chaos.poison_loss(step))
        compute_s = pre_s + self.engine.local_s
        grad_norm = self.engine.clip_grad_norm(self.cfg.train.grad_clip)
        t_sync = time.perf_counter()
        local_bad = not math.isfinite(loss)  # this rank's own loss (grads are already averaged)
        g_loss, any_bad, sums = agree_with_counts(loss, self.engine.loss_weight,
                                                  local_bad or not math.isfinite(grad_norm),
                                                  self.pending_counts() + self.intervals.counts()
                                                  + (1.0 if preempt.requested() else 0.0,))
        self.settle_pending(*sums[:2])
        self.intervals.agreed(sums[2:-1])  # checkpoint.every_steps: auto, the same on every rank
        self.preempt_agreed = self.preempt_agreed or sums[-1] > 0  # signals land mid-step on some ranks
        sync_s = time.perf_counter() - t_sync
        lr = self._lr()
        if getattr(self.engine, "last_overflow", False) and math.isfinite(g_loss):
            return self._overflow(step, g_loss, t0)  # fp16 loss scaling backs off: not a data problem
        verdict = judge_step(float("nan") if any_bad else g_loss, grad_norm, self.st.good_losses, self.spike)
        replay = (self.replay.review(step, idx, loss, verdict, self.st.sampler, self.st.good_losses, self.spike,
                                     t_wall) if verdict.bad else None)
        if replay is not None and replay.applied:  # transient: the replay's clean gradients are applied
            verdict, g_loss, grad_norm = LossVerdict(False, "replayed_clean"), replay.loss, replay.grad_norm
        if verdict.bad:
            self.engine.discard()
            if replay is None or replay.skip_batch:
                self.st.sampler.skip.update(idx)
            self.bad_run.append(idx)
        else:
            if self.pending is not None:
                t_wait = time.perf_counter()
                self.pending.wait_staged()  # the checkpoint's copy must be taken before weights change
                ckpt_wait_s = time.perf_counter() - t_wait
            self.engine.apply(lr)
            self.st.step += 1
            self.st.good_losses = (self.st.good_losses + [g_loss])[-self.spike.window:]
            self.bad_run = []
        step_s = time.perf_counter() - t0
        own = step_s - slept - ckpt_wait_s  # the EMA excludes injected slowness, or the straggler would snowball
        self.ema_step_s = own if not self.ema_step_s else 0.9 * self.ema_step_s + 0.1 * own
        self.tel.step, self.tel.phase = self.st.step, "step"
        self.tel.send("step", step=step, loss=g_loss, grad_norm=grad_norm, lr=lr, step_time=step_s,
                      compute_time=compute_s, sync_time=sync_s, ckpt_wait_s=ckpt_wait_s,
                      mem_step=None if self.mem is None else self.mem.published_step,
                      mem_block_s=None if self.mem is None else self.mem.take_block_s(),
                      tokens=len(idx) * self.cfg.model.seq_len, skipped=verdict.bad, rule=verdict.rule,
                      replay_s=replay.seconds if replay else 0.0)
        if verdict.bad and replay is None:  # a replayed step is reported by its replay event
            self.tel.event("skip_step", step=step, rule=verdict.rule, detail=verdict.detail,
                           samples=[idx[0], idx[-1]], local_bad=local_bad, t_start=t_wall)
        return not verdict.bad

    def _overflow(self, step: int, loss: float, t0: float) -> bool:
        """An fp16 gradient overflow: the scaler lowers its scale and the update is not applied; the
        batch is not bad data, so it is neither skip-listed nor counted towards a rollback."""
        self.engine.discard()
        secs = time.perf_counter() - t0
        self.tel.send("step", step=step, loss=loss, grad_norm=float("inf"), lr=self._lr(), step_time=secs,
                      compute_time=secs, tokens=0, skipped=True, rule="fp16_overflow")
        return False

    # ---- rollback, eval, run ------------------------------------------------------------------
    def rollback(self) -> None:
        """Tier 2: back to the last good checkpoint, skipping the window of batches that led here."""
        bad_from = self.st.step
        window = [i for batch in self.bad_run for i in batch]
        extra_skip = self.cfg.policy.rollback_skip_batches * self.cfg.train.global_batch
        first_bad = min(window) if window else self.st.sampler.cursor
        self.st.sampler.skip.update(range(max(0, first_bad - extra_skip), first_bad))
        self.st.sampler.skip.update(window)
        if self.mem is not None:
            self.mem.discard_all()  # the abandoned trajectory's copies must never be restored
        good = ckpt.committed(self.root)
        target = good[-1].step if good else None
        if target is not None and self.rollbacks_to.get(target, 0) >= MAX_ROLLBACKS_TO_SAME:
            self._distrust(target)  # diverged again from the same state: it is already on the bad path
        restored = self.restore()
        if restored is not None:
            self.rollbacks_to[restored] = self.rollbacks_to.get(restored, 0) + 1
        self.bad_run = []
        self.tel.event("rollback", from_step=bad_from, to_step=restored, skipped=len(window) + extra_skip)

    def _distrust(self, step: int) -> None:
        """Mark a checkpoint bad (all ranks agree by a barrier) so the rollback goes further back."""
        if self.rank == 0:
            ckpt.mark_bad(ckpt.step_dir(self.root, step), f"diverged again after {MAX_ROLLBACKS_TO_SAME} rollbacks")
            self.tel.event("checkpoint_bad", step=step, path=str(ckpt.step_dir(self.root, step)),
                           reason="divergence recurs from this checkpoint")
        if dist.is_initialized():
            dist.barrier()

    @torch.no_grad()
    def evaluate(self) -> float:
        with self.phase("eval"):
            return self._evaluate()

    def _evaluate(self) -> float:
        n = self.cfg.data.eval_batches * self.cfg.train.global_batch
        mine = shard(list(range(n)), self.engine.dp_rank, self.engine.dp_size)
        x, y = self.corpus.batch(mine, held_out=True)
        loss = self.engine.eval_loss(x, y)
        mean, _ = all_ranks_agree(loss, self.engine.loss_weight, False)
        self.tel.event("eval", step=self.st.step, eval_loss=mean)
        if self.engine.dp_rank == 0 and (samples := eval_samples(self.engine)) is not None:
            self.tel.event("samples", step=self.st.step, samples=samples)  # greedy, fixed prompts
        return mean

    def _fence_check(self) -> None:
        """Stop before the next step once the supervisor has moved to a newer epoch (one stat)."""
        try:
            self.guard.check()
        except Fenced as exc:
            self.tel.event("fenced", step=self.st.step, epoch=exc.mine, current=exc.current)
            raise

    def run(self) -> float | None:
        """Train to the end and return the final eval loss; None when preempted (checkpoint saved)."""
        total = self.cfg.train.steps
        eval_every = self.cfg.train.eval_every
        if self.st.step == 0 and not ckpt.committed(self.root):
            self.save_checkpoint()  # step 0: something to roll back to
        while self.st.step < total:
            self._fence_check()
            if self.preempt_agreed:  # every rank stops at the same step, whenever its signal came
                self.save_checkpoint(blocking=True)  # time limit or preemption: save, then requeue
                self.tel.event("preempted", step=self.st.step)
                return None
            applied = self.train_step()
            if applied:
                self.snapshot_memory()
            if applied and (self.st.step % self.intervals.storage == 0 or self.st.step == total):
                self.save_checkpoint(blocking=self.st.step == total)
            if applied and eval_every and self.st.step % eval_every == 0 and self.st.step < total:
                self.evaluate()
            if len(self.bad_run) >= self.cfg.policy.max_consecutive_bad:
                self.rollback()
        self.finish_pending()
        if self.mem is not None:
            self.mem.wait()
        if self.stager is not None:
            self.stager.close()
        final = self.evaluate()
        if dist.is_initialized():
            dist.barrier()
        return final
