"""Turning rank telemetry into run facts: journal events, per-step metrics, faults found in-step.

Only the supervisor's thread calls this. Messages from an older attempt (epoch) are rejected and
counted (``stale_epoch_rejected``, journaled): a fenced attempt never moves the run; events that every
rank sends (skip, rollback, eval, done) are taken from one rank.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.step_stats import StepRow
from orchestrator.triage import Candidate
from spec.layout import rank_log_name

if TYPE_CHECKING:
    from orchestrator.supervisor import Supervisor

SKIP_RULE_KIND = {"nonfinite_loss": "nan", "nonfinite_grad": "nan", "spike": "loss_spike"}


class RunEvents:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.metrics_path = sup.run_dir / "metrics.jsonl"
        self._metrics = open(self.metrics_path, "a")
        self.step_t: dict[int, float] = {}
        self._stale_seen: set[tuple[int, int, str]] = set()

    # ---- dispatch --------------------------------------------------------------------------------
    def on_message(self, msg: dict[str, Any], now: float) -> None:
        w = self.sup.watch
        if w is None or msg["attempt"] != w.spec.attempt:
            if w is not None and isinstance(msg["attempt"], int) and msg["attempt"] < w.spec.attempt:
                self.reject_stale(msg, w.spec.attempt)
            return
        w.seen(msg, now)
        kind = msg["type"]
        if kind == "step":
            self.on_step(msg, now)
        elif kind == "event":
            handler = getattr(self, f"ev_{msg['kind']}", None)
            every_rank = ("skip_step", "local_bad", "memory_copy_bad")
            if handler is not None and (msg["rank"] == 0 or msg["kind"] in every_rank):
                handler(msg, now)
        elif kind == "rank_exit":
            w.on_rank_exit(msg, self.sup.classify, now)

    def reject_stale(self, msg: dict[str, Any], current: int) -> None:
        """Count every message of a fenced epoch; journal each step/event, and a rank's first heartbeat."""
        self.sup.snap.stale_epoch_rejected += 1
        kind = str(msg.get("kind") or msg["type"])
        key = (int(msg["attempt"]), int(msg.get("rank", -1)), kind)
        if msg["type"] == "hb" and key in self._stale_seen:
            return
        self._stale_seen.add(key)
        self.sup.journal.append("stale_epoch_rejected", what=kind, epoch=msg["attempt"], current=current,
                                rank=msg.get("rank"), step=msg.get("step"),
                                total=self.sup.snap.stale_epoch_rejected)

    def on_step(self, msg: dict[str, Any], now: float) -> None:
        sup, w = self.sup, self.sup.watch
        assert w is not None
        w.progressed(int(msg["rank"]), now)
        if msg["rank"] == 0:
            self._lead_step(msg, now)
        for row in w.agg.add(msg):
            self._row(row, now)

    def _lead_step(self, msg: dict[str, Any], now: float) -> None:
        sup, w = self.sup, self.sup.watch
        assert w is not None
        secs = float(msg.get("step_time") or 0.0)
        if w.first_step_t is None:
            w.first_step_t = now
            began = sup.recovery_started_t if sup.recovery_started_t is not None else sup.meter.t0
            sup.meter.lost.restart += max(0.0, now - began - secs)
            sup.recovery_started_t = None
        sup.meter.on_step(int(msg["step"]), secs, bool(msg.get("skipped")), float(msg.get("ckpt_wait_s") or 0.0),
                          float(msg.get("replay_s") or 0.0))
        sup.meter.lost.checkpoint += float(msg.get("mem_block_s") or 0.0)  # the memory tier's tensor copy
        if not msg.get("skipped"):
            sup.auto_interval.tuner.on_step(secs, msg.get("mem_block_s"))
        if msg.get("mem_step") is not None:
            sup.snap.last_memory_step = int(msg["mem_step"])
        snap = sup.snap
        if not msg.get("skipped"):
            snap.step = int(msg["step"]) + 1
            snap.loss, snap.grad_norm, snap.lr = msg.get("loss"), msg.get("grad_norm"), msg.get("lr")
        if secs > 0 and isinstance(msg.get("tokens"), int):
            snap.tokens_per_s = msg["tokens"] / secs
        self.step_t[int(msg["step"])] = now

    def _row(self, row: StepRow, now: float) -> None:
        sup, w = self.sup, self.sup.watch
        assert w is not None
        med, mx, slow = row.summary()
        sup.snap.step_time_median_s, sup.snap.step_time_max_s, sup.snap.slowest_rank = med, mx, slow
        sup.snap.node_step_time_s = row.node_times(w.rank_node)  # per node, for dashboards
        lead = row.lead
        line = {"step": row.step, "attempt": row.attempt, "t": lead.get("t"), "loss": lead.get("loss"),
                "grad_norm": lead.get("grad_norm"), "lr": lead.get("lr"),
                "tokens_per_s": sup.snap.tokens_per_s, "step_time": lead.get("step_time"),
                "skipped": bool(lead.get("skipped")), "node_step_time": sup.snap.node_step_time_s}
        self._metrics.write(json.dumps(line, default=str) + "\n")
        self._metrics.flush()
        if not lead.get("skipped"):
            # Differences under a third of the step cannot make a straggler: on shared cores the
            # scheduler alone moves a few-millisecond forward pass by 2x.
            floor = 0.35 * float(lead.get("step_time") or 0.0)
            times = np.full(w.spec.world, np.nan)
            for r, secs in row.compute.items():
                if 0 <= r < w.spec.world:
                    times[r] = max(secs, floor)
            for f in sup.straggler.observe_array(row.step, times, w.rank_node):
                self._straggler(f, now)
            compute = float(np.median(list(row.compute.values()))) if row.compute else 0.0
            step_s = float(lead.get("step_time") or 0.0) - float(lead.get("ckpt_wait_s") or 0.0)
            comm = sup.comm.observe(row.step, step_s, compute)
            if comm is not None:
                sup.on_comm_slowdown(comm, now)

    def _straggler(self, f: Any, now: float) -> None:
        sup = self.sup
        since_t = self.step_t.get(f.since_step, now)
        c = Candidate("straggler", since_t, f.rank, f.node,
                      {"detail": f"score {f.score:.2f}x median, confidence {f.confidence:.2f}",
                       "score": f.score, "since_step": f.since_step})
        if sup.cfg.policy.straggler_action == "alert":
            sup.record_fault(c, now, "alert", step=f.since_step)
        else:
            sup.watch.add_candidate(c, now)  # type: ignore[union-attr]

    # ---- events from rank 0 (or from every rank, for skip votes) ---------------------------------------
    def ev_skip_step(self, msg: dict[str, Any], now: float) -> None:
        w = self.sup.watch
        assert w is not None
        votes = w.skip_votes.setdefault(int(msg["step"]), [])
        votes.append(msg)
        if len(votes) < w.spec.world:
            return
        culprit = next((v for v in votes if v.get("local_bad")), votes[0])
        kind = SKIP_RULE_KIND.get(str(msg.get("rule")), "nan")
        t_fault = float(culprit.get("t_start", culprit["t"]))
        c = Candidate(kind, t_fault, int(culprit["rank"]) if culprit.get("local_bad") else None,
                      w.rank_node.get(int(culprit["rank"])) if culprit.get("local_bad") else None,
                      {"detail": str(msg.get("detail", "")), "rule": msg.get("rule")})
        self.sup.record_fault(c, now, "skip_step", step=int(msg["step"]))
        self.sup.snap.batches_skipped += 1
        del w.skip_votes[int(msg["step"])]

    def ev_replay(self, msg: dict[str, Any], now: float) -> None:
        from orchestrator.replay_events import on_replay  # the verdict's journal line, fault and action
        on_replay(self.sup, msg, now)

    def ev_rollback(self, msg: dict[str, Any], now: float) -> None:
        sup = self.sup
        to = msg.get("to_step") or 0
        lost = sup.meter.rewind(int(to))
        sup.snap.steps_lost_to_rollbacks += lost
        sup.snap.batches_skipped += int(msg.get("skipped", 0))
        c = Candidate("divergence", now, None, None,
                      {"detail": f"{sup.cfg.policy.max_consecutive_bad} bad steps in a row"})
        sup.record_fault(c, now, "rollback", lost_steps=lost, step=int(msg.get("from_step", 0)))

    def ev_checkpoint(self, msg: dict[str, Any], now: float) -> None:
        snap = self.sup.snap
        save_s = float(msg.get("save_s", 0.0))
        snap.last_checkpoint_step, snap.last_checkpoint_t, snap.checkpoint_save_s = int(msg["step"]), now, save_s
        self.sup.meter.lost.checkpoint += save_s
        self.sup.auto_interval.tuner.on_checkpoint(save_s)
        self.sup.journal.append("checkpoint", step=int(msg["step"]), path=msg.get("path"), save_s=save_s)

    def ev_stale_checkpoint(self, msg: dict[str, Any], now: float) -> None:
        """The new epoch's rank 0 refused a checkpoint a dead epoch committed after its fence."""
        self.sup.snap.stale_epoch_rejected += 1
        self.sup.journal.append("stale_epoch_rejected", what="checkpoint", epoch=msg.get("epoch"),
                                current=msg["attempt"], step=msg.get("step"), path=msg.get("path"),
                                fenced_at=msg.get("fenced_at"), total=self.sup.snap.stale_epoch_rejected)

    def ev_checkpoint_loaded(self, msg: dict[str, Any], now: float) -> None:
        sup = self.sup
        sup.snap.checkpoint_load_s = float(msg.get("load_s", 0.0))
        sup.journal.append("checkpoint_loaded", step=msg.get("step"), load_s=msg.get("load_s"),
                           tier=msg.get("tier", "storage"))
        sup.auto_interval.tuner.on_restore(str(msg.get("tier", "storage")))
        if msg.get("step") is not None:  # restored older than the fault handler assumed: redo more
            lost = sup.meter.rewind(int(msg["step"]))
            sup.snap.steps_lost_to_rollbacks += lost
            sup.snap.step = min(sup.snap.step, int(msg["step"]))

    def ev_memory_copy_bad(self, msg: dict[str, Any], now: float) -> None:
        """A memory copy refused at restore (torn, corrupted, stale, other layout): the next one is used."""
        self.sup.journal.append("memory_copy_bad", rank=msg.get("rank"), step=msg.get("step"),
                                epoch=msg.get("epoch"), path=msg.get("path"), reason=msg.get("reason"))

    def ev_checkpoint_bad(self, msg: dict[str, Any], now: float) -> None:
        self.sup.journal.append("checkpoint_bad", step=msg.get("step"), path=msg.get("path"),
                                reason=msg.get("reason"))
        c = Candidate("checkpoint_bad", now, 0, None, {"detail": str(msg.get("reason"))})
        self.sup.record_fault(c, now, "fallback_checkpoint", step=msg.get("step"))

    def ev_checkpoint_failed(self, msg: dict[str, Any], now: float) -> None:
        kind = str(msg.get("fault") or "checkpoint_error")
        c = Candidate(kind, now, 0, None, {"detail": str(msg.get("detail", ""))})
        self.sup.record_fault(c, now, "alert", step=msg.get("step"))

    def ev_precision(self, msg: dict[str, Any], now: float) -> None:
        c = Candidate("precision_mismatch", now, 0, None,
                      {"detail": str(msg.get("detail", ""))[:300], "finding": msg.get("finding")})
        self.sup.record_fault(c, now, "alert", step=msg.get("step"))

    def ev_eval(self, msg: dict[str, Any], now: float) -> None:
        self.sup.snap.eval_loss = msg.get("eval_loss")
        self.sup.journal.append("eval", step=msg.get("step"), eval_loss=msg.get("eval_loss"))

    def ev_samples(self, msg: dict[str, Any], now: float) -> None:
        self.sup.journal.append("samples", step=msg.get("step"), samples=msg.get("samples"))

    def ev_done(self, msg: dict[str, Any], now: float) -> None:
        w = self.sup.watch
        assert w is not None
        w.done, w.done_t = msg, now
        self.sup.snap.eval_loss = msg.get("eval_loss")
        self.sup.snap.step = int(msg.get("step", self.sup.snap.step))

    def ev_started(self, msg: dict[str, Any], now: float) -> None:
        self.sup.journal.append("ranks_started", attempt=msg["attempt"], resume_step=msg.get("resume_step"))

    # ---- hang attribution ----------------------------------------------------------------------------------
    def attribute_hang(self, c: Candidate) -> Candidate:
        """Ask every rank for its stack (faulthandler on SIGUSR1, sent by the launcher: through the
        scheduler on Slurm, never to a pid another host reported); the one not in a collective hangs."""
        w = self.sup.watch
        assert w is not None
        launcher = self.sup.launcher
        culprit = hang_culprit(lambda: launcher.dump_stacks(dict(w.pids)), sorted(w.rank_node),
                               w.spec.log_dir, w.rank_node)
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
