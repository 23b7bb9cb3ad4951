"""Turning rank telemetry into run facts: journal lines, per-step metrics, faults found in-step.

Only the supervisor's thread calls this. Each message updates the attempt's receive bookkeeping (the
watch: heartbeats, progress, per-step rows) and returns :mod:`run_facts` that the supervisor applies;
nothing here touches the supervisor. Messages from an older attempt (epoch) are rejected and counted
(``stale_epoch_rejected``, journaled): a fenced attempt never moves the run; events that every rank sends
(skip, rollback, eval, done) are taken from one rank.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from health.detectors.comm_slowdown import CommSlowdownDetector
from health.detectors.straggler import StragglerDetector
from orchestrator.attempt import AttemptWatch
from orchestrator.run_facts import (CheckpointSaved, Counted, Done, Fact, FaultFound, Journaled, Replayed, Restored,
                                    RolledBack, Snapshot, SlowComm, StepTimed, Suspect)
from orchestrator.step_stats import NodeIndex, StepRow
from orchestrator.telemetry_columns import Rows
from orchestrator.triage import Candidate
from spec.config import RunConfig

SKIP_RULE_KIND = {"nonfinite_loss": "nan", "nonfinite_grad": "nan", "spike": "loss_spike"}
EVERY_RANK = ("skip_step", "local_bad", "memory_copy_bad")  # events taken from every rank, not only rank 0


class RunEvents:
    def __init__(self, metrics_path: Path, cfg: RunConfig, straggler: StragglerDetector,
                 comm: CommSlowdownDetector, classify: Callable[[int | None, int | None, str], Any]) -> None:
        self.cfg, self.straggler, self.comm, self.classify = cfg, straggler, comm, classify
        self.metrics_path = metrics_path
        self._metrics = open(self.metrics_path, "a")
        self.step_t: dict[int, float] = {}
        self.stale_rejected = 0
        self.tokens_per_s: float | None = None
        self._stale_seen: set[tuple[int, int, str]] = set()
        self._node_index: tuple[AttemptWatch, NodeIndex] | None = None  # the current attempt's rank → node arrays

    # ---- dispatch --------------------------------------------------------------------------------
    def on_message(self, msg: dict[str, Any], now: float, w: AttemptWatch | None) -> list[Fact]:
        if w is None or msg["attempt"] != w.spec.attempt:
            if w is not None and isinstance(msg["attempt"], int) and msg["attempt"] < w.spec.attempt:
                return self.reject_stale(msg, w.spec.attempt)
            return []
        kind = msg["type"]
        if kind == "hbs":  # a node agent's aggregate: each rank's last-heard time, then its step rows
            w.seen_aggregate(msg["ranks"], msg.get("phases"), now)
            return self.on_rows(msg["rows"], msg["cols"], now, w)
        w.seen(msg, now)
        if kind == "step":
            return self.on_step(msg, now, w)
        if kind == "event":
            handler = getattr(self, f"ev_{msg['kind']}", None)
            if handler is not None and (msg["rank"] == 0 or msg["kind"] in EVERY_RANK):
                out: list[Fact] = handler(msg, now, w)
                return out
        elif kind == "rank_exit":
            w.on_rank_exit(msg, self.classify, now)
        return []

    def reject_stale(self, msg: dict[str, Any], current: int) -> list[Fact]:
        """Count every message of a fenced epoch; journal each step/event, and a rank's first heartbeat.
        A node aggregate counts as its heartbeats plus each step row it carries, as if they came alone."""
        if msg["type"] == "hbs":
            rows = [(r["rank"], r["step"]) for r in msg.get("rows") or []]
            cols = msg.get("cols")
            rows += zip(cols.rank, cols.step) if cols is not None else []
            if rows:
                out = self.reject_stale({**msg, "rows": [], "cols": None}, current) if len(msg["ranks"]) else []
                for rank, step in rows:
                    out += self.reject_stale({"type": "step", "rank": rank, "attempt": msg["attempt"], "step": step},
                                             current)
                return out
        self.stale_rejected += 1
        counted = Snapshot({"stale_epoch_rejected": self.stale_rejected})
        kind = str(msg.get("kind") or msg["type"])
        key = (int(msg["attempt"]), int(msg.get("rank", -1)), kind)
        if msg["type"] in ("hb", "hbs") and key in self._stale_seen:
            return [counted]
        self._stale_seen.add(key)
        return [counted, Journaled("stale_epoch_rejected", dict(
            what=kind, epoch=msg["attempt"], current=current, rank=msg.get("rank"), step=msg.get("step"),
            total=self.stale_rejected))]

    def on_step(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        w.progressed(int(msg["rank"]), now)
        out = self._lead_step(msg, now, w) if msg["rank"] == 0 else []
        for row in w.agg.add(msg):
            out += self._row(row, now, w)
        return out

    def on_rows(self, leads: list[dict[str, Any]], cols: Rows, now: float, w: AttemptWatch) -> list[Fact]:
        """A node's step rows: the other ranks' packed (rank, step, compute seconds) first, then rank 0's
        whole messages; the same bookkeeping as one ``step`` message each. (Rank 0's row completes its
        step, so the others' rows of the same node are in before it; the order of the others among
        themselves does not matter to any rule.)"""
        out = self._short_rows(cols, now, w) if len(cols) else []
        for row in leads:
            w.seen(row, now)
            out += self.on_step(row, now, w)
        return out

    def _short_rows(self, cols: Rows, now: float, w: AttemptWatch) -> list[Fact]:
        """What w.seen, w.progressed and the aggregator do per step message, in bulk over the columns
        (orchestrator.telemetry_columns.Rows): at 16k ranks this runs 16k times a second."""
        stamp = dict.fromkeys(cols.rank, now)
        w.last_hb.update(stamp)
        w.last_progress.update(stamp)
        w.last_progress_max = now
        for node in {w.rank_node.get(r) for r in stamp}:
            if node:
                w.node_last_seen[node] = now
        if w.busy:
            for r in stamp:
                w.busy.pop(r, None)
        out: list[Fact] = []
        steps = cols.step
        for step in ((steps[0],) if min(steps) == max(steps) else dict.fromkeys(steps)):  # usually one step
            times = {r: t for r, s, t in zip(cols.rank, steps, cols.secs) if s == step and t == t}  # NaN: unknown
            for done in w.agg.add_times(step, times):
                out += self._row(done, now, w)
        return out

    def _lead_step(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        secs = float(msg.get("step_time") or 0.0)
        first = w.first_step_t is None
        if secs > 0:
            w.note_step_time(secs, first)
        if first:
            w.first_step_t = now
        skipped = bool(msg.get("skipped"))
        out: list[Fact] = [StepTimed(int(msg["step"]), secs, skipped, float(msg.get("ckpt_wait_s") or 0.0),
                                     float(msg.get("replay_s") or 0.0), msg.get("mem_block_s"), first)]
        values: dict[str, Any] = {}
        if msg.get("mem_step") is not None:
            values["last_memory_step"] = int(msg["mem_step"])
        if not skipped:
            values.update(step=int(msg["step"]) + 1, loss=msg.get("loss"), grad_norm=msg.get("grad_norm"),
                          lr=msg.get("lr"))
        if secs > 0 and isinstance(msg.get("tokens"), int):
            self.tokens_per_s = values["tokens_per_s"] = msg["tokens"] / secs
        self.step_t[int(msg["step"])] = now
        return out + [Snapshot(values)] if values else out

    def drain(self, w: AttemptWatch) -> None:
        """Write the metrics lines of steps whose row never completed, at the end of an attempt. Not fed
        to the detectors: a row with a dead node's ranks missing says nothing about stragglers."""
        for row in w.agg.drain():
            self._write_line(row, w)

    def _write_line(self, row: StepRow, w: AttemptWatch) -> dict[str, float]:
        if self._node_index is None or self._node_index[0] is not w:
            self._node_index = (w, NodeIndex(w.rank_node))
        node_times = row.node_times(w.rank_node, self._node_index[1])
        lead = row.lead
        line = {"step": row.step, "attempt": row.attempt, "t": lead.get("t"), "loss": lead.get("loss"),
                "grad_norm": lead.get("grad_norm"), "lr": lead.get("lr"),
                "tokens_per_s": self.tokens_per_s, "step_time": lead.get("step_time"),
                "ckpt_wait_s": lead.get("ckpt_wait_s"),  # the step's wait for an async checkpoint's staging
                "skipped": bool(lead.get("skipped")), "node_step_time": node_times}
        self._metrics.write(json.dumps(line, default=str) + "\n")
        self._metrics.flush()
        return node_times

    def _row(self, row: StepRow, now: float, w: AttemptWatch) -> list[Fact]:
        med, mx, slow = row.summary()
        node_times = self._write_line(row, w)  # per node, for dashboards
        out: list[Fact] = [Snapshot({"step_time_median_s": med, "step_time_max_s": mx, "slowest_rank": slow,
                                     "node_step_time_s": node_times})]
        lead = row.lead
        if not lead.get("skipped"):
            out += self._detect_slow(row, lead, now, w)
        return out

    def _detect_slow(self, row: StepRow, lead: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        """Stragglers (one rank or node slower) and a slow network (every rank slower, compute not)."""
        # Differences under a third of the step cannot make a straggler: on shared cores the
        # scheduler alone moves a few-millisecond forward pass by 2x.
        floor = 0.35 * float(lead.get("step_time") or 0.0)
        world = w.spec.world
        times = np.full(world, np.nan)
        if row.compute:  # one numpy pass, not a Python loop over every rank (16k at scale)
            ranks = np.fromiter(row.compute.keys(), dtype=np.int64, count=len(row.compute))
            secs = np.fromiter(row.compute.values(), dtype=float, count=len(row.compute))
            ok = (ranks >= 0) & (ranks < world)
            times[ranks[ok]] = np.maximum(secs[ok], floor)
        out = [self._straggler(f, now) for f in self.straggler.observe_array(row.step, times, w.rank_node)]
        compute = float(np.median(list(row.compute.values()))) if row.compute else 0.0
        step_s = float(lead.get("step_time") or 0.0) - float(lead.get("ckpt_wait_s") or 0.0)
        comm = self.comm.observe(row.step, step_s, compute)
        return out + [SlowComm(comm)] if comm is not None else out

    def _straggler(self, f: Any, now: float) -> Fact:
        c = Candidate("straggler", self.step_t.get(f.since_step, now), f.rank, f.node,
                      {"detail": f"score {f.score:.2f}x median, confidence {f.confidence:.2f}",
                       "score": f.score, "since_step": f.since_step})
        if self.cfg.policy.straggler_action == "alert":
            return FaultFound(c, "alert", step=f.since_step)
        return Suspect(c)

    # ---- events from rank 0 (or from every rank, for skip votes) ---------------------------------------
    def ev_skip_step(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        votes = w.skip_votes.setdefault(int(msg["step"]), [])
        votes.append(msg)
        if len(votes) < w.spec.world:
            return []
        culprit = next((v for v in votes if v.get("local_bad")), votes[0])
        kind = SKIP_RULE_KIND.get(str(msg.get("rule")), "nan")
        t_fault = float(culprit.get("t_start", culprit["t"]))
        c = Candidate(kind, t_fault, int(culprit["rank"]) if culprit.get("local_bad") else None,
                      w.rank_node.get(int(culprit["rank"])) if culprit.get("local_bad") else None,
                      {"detail": str(msg.get("detail", "")), "rule": msg.get("rule")})
        del w.skip_votes[int(msg["step"])]
        return [FaultFound(c, "skip_step", step=int(msg["step"])), Counted("batches_skipped")]

    def ev_replay(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        return [Replayed(msg)]

    def ev_rollback(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        c = Candidate("divergence", now, None, None,
                      {"detail": f"{self.cfg.policy.max_consecutive_bad} bad steps in a row"})
        return [RolledBack(int(msg.get("to_step") or 0), int(msg.get("skipped", 0)), c, int(msg.get("from_step", 0)))]

    def ev_checkpoint(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        save_s = float(msg.get("save_s", 0.0))
        return [Snapshot({"last_checkpoint_step": int(msg["step"]), "last_checkpoint_t": now,
                          "checkpoint_save_s": save_s}),
                CheckpointSaved(int(msg["step"]), save_s),
                Journaled("checkpoint", dict(step=int(msg["step"]), path=msg.get("path"), save_s=save_s))]

    def ev_stale_checkpoint(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        """The new epoch's rank 0 refused a checkpoint a dead epoch committed after its fence."""
        self.stale_rejected += 1
        return [Snapshot({"stale_epoch_rejected": self.stale_rejected}),
                Journaled("stale_epoch_rejected", dict(what="checkpoint", epoch=msg.get("epoch"), current=msg["attempt"],
                                                       step=msg.get("step"), path=msg.get("path"),
                                                       fenced_at=msg.get("fenced_at"), total=self.stale_rejected))]

    def ev_checkpoint_loaded(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        tier = str(msg.get("tier", "storage"))
        return [Snapshot({"checkpoint_load_s": float(msg.get("load_s", 0.0))}),
                Journaled("checkpoint_loaded", dict(step=msg.get("step"), load_s=msg.get("load_s"),
                                                    tier=msg.get("tier", "storage"),
                                                    from_world=msg.get("from_world"))),
                Restored(tier, float(msg.get("load_s", 0.0)), None if msg.get("step") is None else int(msg["step"]))]

    def ev_memory_copy_bad(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        """A memory copy refused at restore (torn, corrupted, stale, other layout): the next one is used."""
        return [Journaled("memory_copy_bad", dict(rank=msg.get("rank"), step=msg.get("step"), epoch=msg.get("epoch"),
                                                  path=msg.get("path"), reason=msg.get("reason")))]

    def ev_checkpoint_bad(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        c = Candidate("checkpoint_bad", now, 0, None, {"detail": str(msg.get("reason"))})
        return [Journaled("checkpoint_bad", dict(step=msg.get("step"), path=msg.get("path"), reason=msg.get("reason"))),
                FaultFound(c, "fallback_checkpoint", step=msg.get("step"))]

    def ev_checkpoint_failed(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        kind = str(msg.get("fault") or "checkpoint_error")
        return [FaultFound(Candidate(kind, now, 0, None, {"detail": str(msg.get("detail", ""))}), "alert",
                           step=msg.get("step"))]

    def ev_precision(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        c = Candidate("precision_mismatch", now, 0, None,
                      {"detail": str(msg.get("detail", ""))[:300], "finding": msg.get("finding")})
        return [FaultFound(c, "alert", step=msg.get("step"))]

    def ev_eval(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        return [Snapshot({"eval_loss": msg.get("eval_loss")}),
                Journaled("eval", dict(step=msg.get("step"), eval_loss=msg.get("eval_loss")))]

    def ev_samples(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        return [Journaled("samples", dict(step=msg.get("step"), samples=msg.get("samples")))]

    def ev_done(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        return [Done(msg)]

    def ev_started(self, msg: dict[str, Any], now: float, w: AttemptWatch) -> list[Fact]:
        return [Journaled("ranks_started", dict(attempt=msg["attempt"], resume_step=msg.get("resume_step"),
                                                startup=msg.get("startup")))]
