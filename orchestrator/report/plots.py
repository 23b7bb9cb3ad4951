"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

Why ``Figure`` + ``FigureCanvasAgg`` rather than pyplot: no global figure state, so reports can be
built from several threads (or in a test run) without leaking figures or needing a display.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orchestrator.report.rundir import RunData

#: journal marker styles: (colour, line style, legend label)
MARKS = {"fault": ("tab:red", ":", "fault"), "rollback": ("tab:orange", "--", "rollback"),
         "skip_step": ("tab:gray", "-", "skipped step"), "relaunch": ("tab:green", "-.", "relaunch")}
MAX_LABELS = 25  # beyond this, fault kinds are not written next to their lines


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _finite(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def marker_steps(run: RunData) -> dict[str, list[tuple[int, str]]]:
    """Steps to mark on the loss plot, by category, each with a short label (the fault kind...)."""
    out: dict[str, list[tuple[int, str]]] = {k: [] for k in MARKS}
    for e in run.events:
        step, ev = e.get("step"), e.get("event")
        if ev == "fault" and step is not None:
            out["fault"].append((int(step), str(e.get("kind", ""))))
        elif ev == "action" and step is not None and e.get("action") in ("rollback", "skip_step"):
            out[str(e["action"])].append((int(step), str(e.get("kind", ""))))
        elif ev == "launch" and int(e.get("attempt", 0)) > 0:
            out["relaunch"].append((int(e.get("resume_step") or 0), f"attempt {e.get('attempt')}"))
    for m in run.metrics:
        if m.get("skipped") and (m["step"], "") not in out["skip_step"]:
            out["skip_step"].append((int(m["step"]), ""))
    return out


def loss_figure(run: RunData) -> Figure:
    """Loss and eval loss against step, every fault, rollback, skip and relaunch marked."""
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot()
    pts = [(m["step"], m["loss"]) for m in run.metrics if not m.get("skipped") and _finite([m.get("loss")])]
    if pts:
        ax.plot(*zip(*pts, strict=True), color="tab:blue", lw=1.2, label="train loss")
    evals = [(s, v) for s, v in run.eval_points() if math.isfinite(v)]
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", color="tab:purple", ms=4, label="eval loss")
    _draw_markers(ax, marker_steps(run))
    ax.set(xlabel="step", ylabel="loss", title=f"{run.name}: loss, with faults and recoveries")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def _draw_markers(ax: Any, marks: dict[str, list[tuple[int, str]]]) -> None:
    n_labels = 0
    for cat, items in marks.items():
        colour, style, label = MARKS[cat]
        for i, (step, text) in enumerate(sorted(set(items))):
            ax.axvline(step, color=colour, ls=style, lw=1.0, alpha=0.8, label=label if i == 0 else None)
            if cat == "fault" and text and n_labels < MAX_LABELS:
                ax.annotate(text, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", ha="right", fontsize=7, color=colour)
                n_labels += 1


def heatmap_figure(run: RunData) -> Figure | None:
    """Step time per node over steps; a straggler is a bright row. None without per-node data."""
    rows = [m for m in run.metrics if isinstance(m.get("node_step_time"), dict)]
    nodes = sorted({n for m in rows for n in m["node_step_time"]})
    if not rows or not nodes:
        return None
    grid = np.full((len(nodes), len(rows)), np.nan)
    for j, m in enumerate(rows):
        for i, node in enumerate(nodes):
            v = m["node_step_time"].get(node)
            grid[i, j] = v if isinstance(v, int | float) else np.nan
    fig = Figure(figsize=(10, 1.2 + 0.45 * len(nodes)))
    ax = fig.add_subplot()
    steps = [m["step"] for m in rows]
    im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="magma",
                   extent=(steps[0] - 0.5, steps[-1] + 0.5, len(nodes) - 0.5, -0.5))
    ax.set_yticks(range(len(nodes)), labels=nodes)
    ax.set(xlabel="step", title="step time per node (s): a straggler is a bright row")
    fig.colorbar(im, ax=ax, label="seconds", pad=0.01)
    return fig


def goodput_series(run: RunData) -> list[tuple[float, float]]:
    """(elapsed s, goodput) after each kept step: time of kept steps over wall time so far."""
    start = run.start_t
    if start is None:
        return []
    out, productive = [], 0.0
    for m in sorted(run.metrics, key=lambda m: m.get("t", 0.0)):
        st = m.get("step_time")
        if not m.get("skipped") and isinstance(st, int | float) and math.isfinite(st):
            productive += float(st)
        elapsed = float(m.get("t", start)) - start
        if elapsed > 0:
            out.append((elapsed, min(1.0, productive / elapsed)))
    return out


def lost_breakdown(run: RunData) -> dict[str, float]:
    """Seconds by cause from status.json; journal ``lost_s`` (cause unknown) when there is no status."""
    status = run.status or {}
    lost = status.get("lost")
    if isinstance(lost, dict):
        out = {k: float(v) for k, v in lost.items() if isinstance(v, int | float)}
        out["productive"] = float(status.get("productive_s") or 0.0)
        return out
    return {"lost (journal)": sum(float(e.get("lost_s") or 0.0) for e in run.of("action"))}


def goodput_figure(run: RunData) -> Figure:
    """Goodput over time (left) and where the wall time went (right)."""
    fig = Figure(figsize=(10, 3.8))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    series = goodput_series(run)
    if series:
        ax.plot(*zip(*series, strict=True), color="tab:green")
    ax.set(xlabel="wall time (s)", ylabel="goodput", ylim=(0, 1.05), title="goodput over time")
    ax.grid(alpha=0.3)
    for e in run.of("fault"):
        if run.start_t is not None:
            ax.axvline(float(e["t"]) - run.start_t, color="tab:red", ls=":", lw=1)
    parts = lost_breakdown(run)
    colours = ["tab:green" if k == "productive" else "tab:red" for k in parts]
    bx.barh(list(parts), list(parts.values()), color=colours)
    bx.set(xlabel="seconds", title="wall time by cause")
    for y, v in enumerate(parts.values()):
        bx.annotate(f"{v:.1f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=8)
    return fig
