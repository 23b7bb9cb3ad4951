"""The shipped rule file is the generated one, promtool accepts it, and every rule passes its unit test.

promtool is the real Prometheus rule engine, so these tests check the PromQL half of each
:class:`AlertRule`; ``test_alerts_rules.py`` checks the Python half.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.metrics.alerts import RULES, RULES_FILE, rules_text

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL_DIR = Path(__file__).resolve().parent / "promtool"
INSTALL = ROOT / "scripts" / "install-prometheus.sh"
UNIT_FILES = sorted(PROMTOOL_DIR.glob("*.yml"))


def ensure_prometheus_binary(name: str) -> str:
    """Path of ``name`` (promtool/prometheus); installs the Debian package once if it is missing.

    Under CI=true a missing binary is a failure, not a skip: CI must exercise the real Prometheus.
    """
    found = shutil.which(name)
    if found is None and INSTALL.exists():
        subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
        found = shutil.which(name)
    if found is None:
        msg = f"{name} not found and {INSTALL.name} could not install it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def test_committed_rules_file_is_generated() -> None:
    assert RULES_FILE.read_text() == rules_text(), (
        "orchestrator/alerts.yml is stale: run "
        "`python -m orchestrator.metrics.alerts > orchestrator/alerts.yml`")


def test_module_main_prints_rules() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator.metrics.alerts"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert out.stdout == rules_text()
    assert out.stderr == ""


def test_every_rule_has_a_unit_test_file() -> None:
    tested = {t["alertname"] for f in UNIT_FILES for g in yaml.safe_load(f.read_text())["tests"]
              for t in g["alert_rule_test"]}
    assert tested == {r.name for r in RULES}


def test_promtool_check_rules() -> None:
    promtool = ensure_prometheus_binary("promtool")
    res = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in res.stdout + res.stderr


def _with_annotations(unit_file: Path, out_dir: Path) -> Path:
    """Copy of ``unit_file`` whose expected alerts carry the summaries from RULES."""
    doc = yaml.safe_load(unit_file.read_text())
    doc["rule_files"] = [str(RULES_FILE)]
    summaries = {r.name: r.summary for r in RULES}
    for group in doc["tests"]:
        for case in group["alert_rule_test"]:
            for alert in case.get("exp_alerts") or []:
                run = alert["exp_labels"]["run"]
                text = summaries[case["alertname"]].replace("{{ $labels.run }}", run)
                alert.setdefault("exp_annotations", {"summary": text})
    out = out_dir / unit_file.name
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.mark.parametrize("unit_file", UNIT_FILES, ids=[f.stem for f in UNIT_FILES])
def test_promtool_unit(unit_file: Path, tmp_path: Path) -> None:
    promtool = ensure_prometheus_binary("promtool")
    prepared = _with_annotations(unit_file, tmp_path)
    res = subprocess.run([promtool, "test", "rules", str(prepared)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
