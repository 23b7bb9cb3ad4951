"""A real Prometheus scrapes a real training run on the local cluster with injected faults: the series
appear, NaNLoss and NodeExcluded fire in Prometheus, and our /alerts agrees while the run is live."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from orchestrator.metrics.alerts import RULES_FILE
from tests.conftest import RunResult, run_submit
from tests.test_alerts_promtool import ensure_prometheus_binary
from tests.test_metrics_prometheus import _ready, api, free_port, poll, prom_firing, query

pytestmark = pytest.mark.prometheus


def test_prometheus_sees_a_faulty_training_run(tmp_path: Path) -> None:
    metrics_port, prom_port = free_port(), free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                   f"rule_files: ['{RULES_FILE}']\n"
                   "scrape_configs:\n  - job_name: orchestrator\n"
                   f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    log = (tmp_path / "prom.log").open("w")
    proc = subprocess.Popen([ensure_prometheus_binary("prometheus"), f"--config.file={cfg}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    result: list[RunResult] = []
    overrides = {"metrics": {"enabled": True, "port": metrics_port},
                 "train": {"steps": 60, "step_sleep_s": 0.15},
                 "chaos": [{"fault": "nan", "step": 8, "rank": 1}, {"fault": "node_failure", "step": 20, "node": 1}]}
    try:
        poll("prometheus ready", lambda: proc.poll() is None and _ready(base))
        t = threading.Thread(target=lambda: result.append(run_submit(tmp_path, overrides, "promrun")))
        t.start()
        poll("the step series", lambda: query(base, 'orchestrator_step{run="t"} > 0'), 120)
        poll("NaNLoss and NodeExcluded firing", lambda: {"NaNLoss", "NodeExcluded"} <= prom_firing(base), 120)
        ours = api(f"http://127.0.0.1:{metrics_port}", "/alerts")
        names = {a["labels"]["alertname"] for a in ours["data"]["alerts"] if a["state"] == "firing"}
        assert {"NaNLoss", "NodeExcluded"} <= names
        assert query(base, 'orchestrator_faults_total{kind="node_failure"} >= 1')
        assert query(base, "orchestrator_goodput_ratio")
        t.join(timeout=300)
        assert result and result[0].code == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
