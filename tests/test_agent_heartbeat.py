"""Node agents heartbeat on every backend; an agent silent past its limit is a lost node: a few times its
own largest recent heartbeat gap, at least FLOOR_S, at most ``health.agent_timeout_s``
(health.detectors.agent_silence).

On the local cluster: SIGSTOP one node's agent (its ranks keep training, so only the agent's own silence
can tell): the node is declared lost well before the 5 s timeout, excluded, and the spare takes its ranks;
the run completes with the clean run's loss. The clean run (the same rule, no fault) declares no loss.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from health.detectors.agent_silence import FLOOR_S
from tests.conftest import RunResult, run_submit


def _stop_agent_at(run_dir: Path, step: int, out: dict[str, Any]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if int(json.loads((run_dir / "status.json").read_text()).get("step") or 0) >= step:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    launch = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()
              if '"launch"' in line][0]  # attempt 0: never a spare a later launch took
    node = launch["nodes"][-1]
    out["node"], out["pid"], out["t"] = node, int(launch["pids"][node]), time.time()
    os.kill(out["pid"], signal.SIGSTOP)


def test_silent_local_agent_is_a_lost_node(tmp_path: Path, clean_run: RunResult) -> None:
    stopped: dict[str, Any] = {}
    t = threading.Thread(target=_stop_agent_at, args=(tmp_path / "run", 25, stopped), daemon=True)
    t.start()
    try:
        r = run_submit(tmp_path, {"health": {"agent_timeout_s": 5.0}})  # the default, said here
    finally:
        t.join(timeout=5)
        if stopped.get("pid"):
            try:
                os.kill(stopped["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert r.code == 0, r.status.get("reason")
    (fault,) = [f for f in r.events("fault") if f["kind"] == "node_failure"]
    detail = fault["evidence"]["detail"]
    assert fault["node"] == stopped["node"] and "silent" in detail and "limit" in detail, fault
    # the agent's pace (0.25 s heartbeats) sets the limit, the floor, not the 5 s timeout; counted from its
    # last heartbeat (up to one interval and a loop turn before the stop); no settle window after it
    assert FLOOR_S - 0.4 <= fault["detected_t"] - stopped["t"] < 4.0, fault
    assert not clean_run.events("fault"), clean_run.events("fault")  # no loss nobody caused
    (fence,) = [e for e in r.events("fence") if e["t"] <= fault["t"]][-1:]
    assert fault["t"] - fence["t"] < 4.0, (fence, fault)  # the silent agent is not waited for (was grace + 3 s)
    assert r.status["excluded_nodes"] == [stopped["node"]]
    assert stopped["node"] not in r.events("launch")[-1]["nodes"]
    assert abs(r.final_eval - clean_run.final_eval) < 1e-6
