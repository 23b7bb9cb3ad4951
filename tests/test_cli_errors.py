"""Every subcommand fails cleanly on missing, wrong and hostile arguments: one line naming what is
wrong, exit 2, no traceback, and nothing in the directory it was pointed at changed.

Hostile arguments: a file where a directory is expected, a run that never started, a run directory
caught mid-write (torn config, status and journal), a YAML file with a Python tag, binary garbage,
and another user's run (run as uid 65534 in a subprocess: we are root, for whom permission bits do
not apply).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config_load import load_config_data
from tests.conftest import BASE

ROOT = Path(__file__).resolve().parent.parent
TORN_CONFIG = "name: t\ncluster: {backend: local, nodes: 2, ranks_"


def _make_workspace(ws: Path) -> None:
    """The hostile tree every case points into."""
    resolved = yaml.safe_dump(load_config_data(dict(BASE)).dump())
    (ws / "file").write_text("just a file\n")
    (ws / "empty").mkdir()
    (ws / "good.yaml").write_text(yaml.safe_dump(BASE))
    (ws / "bad.yaml").write_text("train: {steps: [\n")
    (ws / "evil.yaml").write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    (ws / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    never = ws / "never"
    never.mkdir()
    (never / "config.yaml").write_text(resolved)
    torn = ws / "torn"
    torn.mkdir()
    (torn / "config.yaml").write_text(TORN_CONFIG)
    (torn / "status.json").write_text('{"name": "t", "state": "RUNN')
    (torn / "journal.jsonl").write_text('{"seq":0,"t":1.0,"event":"run_st')
    (torn / "metrics.jsonl").write_text('{"step": 1, "lo')
    fifo = ws / "fifo"  # run files that are FIFOs: a naive read would block forever
    fifo.mkdir()
    (fifo / "config.yaml").write_text(resolved)
    for name in ("journal.jsonl", "status.json", "metrics.jsonl"):
        os.mkfifo(fifo / name)
    creating = ws / "creating"
    creating.mkdir()
    (creating / ".config.yaml.tmp").write_text(resolved[:40])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("hostile")
    _make_workspace(ws)
    return ws


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (mode, mtime_ns, sha256) for everything under root: the "nothing changed" witness."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return out


R = ["{missing}", "{file}", "{empty}", "{never}", "{torn}", "{creating}"]
CASES: list[tuple[str, str]] = [
    *[("validate " + a, w) for a, w in [("", "required"), ("{missing}", "no such file"),
                                         ("{empty}", "is a directory"), ("{bad}", "not valid YAML"),
                                         ("{evil}", "not valid YAML"), ("{binary}", "cannot be read"),
                                         ("{good} --set nope=1", "unknown key"),
                                         ("{good} --set x", "not of the form")]],
    *[("submit " + a, w) for a, w in [("{missing}", "no such file"), ("{empty}", "is a directory"),
                                       ("{good} --run-dir {file}", "is a file"),
                                       ("{good} --run-dir {file}/x", "parent of it is a file"),
                                       ("{good} --run-dir {never}", "already holds a run"),
                                       ("{evil} --run-dir {ws}/new", "not valid YAML")]],
    *[("status " + a, w) for a, w in [("", "required"), ("{missing}", "no such run directory"),
                                       ("{file}", "is a file"), ("{empty}", "not a run directory"),
                                       ("{never}", "never started"), ("{torn}", "torn"),
                                       ("--json {torn}", "torn"), ("{creating}", "not a run directory")]],
    *[(f"{cmd} {a}", w) for cmd in ("resume", "cancel") for a, w in [
        ("{missing}", "no such run directory"), ("{file}", "is a file"), ("{empty}", "no config.yaml"),
        ("{never}", "never started"), ("{torn}", "torn"), ("{creating}", "being created")]],
    *[("probe " + a, w) for a, w in [("{missing}", "no such file"), ("{empty}", "is a directory"),
                                      ("{bad}", "not valid YAML"), ("--bogus", "unrecognized")]],
    *[("plan " + a, w) for a, w in [("{missing}", "no such file"), ("{empty}", "is a directory"),
                                     ("{good} --gpus x", "not a number"),
                                     ("{good} --gpus 8 --gpu-type nonsense", "unknown GPU type")]],
    ("alerts", "required"), ("alerts nope", "invalid choice"),
    *[(f"{cmd} {a}", w) for cmd in ("report", "export-trace") for a, w in [
        ("{missing}", "no such run directory"), ("{file}", "is a file"), ("{never}", "no journal"),
        ("{torn}", "no journal")]],
    *[("ls " + a, w) for a, w in [("{missing}", "no such directory"), ("{file}", "is a file"), ("--bogus", "unrecognized")]],
    *[("compare " + a, w) for a, w in [("{missing} {missing}", "no such run directory"),
                                        ("{file} {file}", "not an orchestrator trace"),
                                        ("{never} {never}", "no journal"), ("{torn} {torn}", "no journal"),
                                        ("{good} {good}", "not an orchestrator trace")]],
    ("dashboard --uid ../x", "grafana uid"), ("dashboard --out {empty}", "is a directory"),
    *[(f"{cmd} {{fifo}}", "not a regular file") for cmd in ("status", "resume", "cancel", "report", "export-trace",
                                                             "ls", "compare {fifo}")],
    ("frobnicate", "invalid choice"),
]


def _argv(spec: str, ws: Path) -> list[str]:
    names = {n: str(ws / n) for n in ("file", "empty", "never", "torn", "creating", "fifo")}
    names |= {"missing": str(ws / "missing"), "ws": str(ws), "good": str(ws / "good.yaml"),
              "bad": str(ws / "bad.yaml"), "evil": str(ws / "evil.yaml"), "binary": str(ws / "binary.yaml")}
    return [part.format(**names) for part in spec.split()]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


def assert_one_clean_line(out: str, err: str, want: str) -> None:
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert "Traceback" not in out + err, out + err
    assert len(lines) == 1, lines
    assert want.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("spec,want", CASES, ids=[c[0] or "none" for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_changed(spec: str, want: str, workspace: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    before = tree(workspace)
    code = _run(_argv(spec, workspace))
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert_one_clean_line(out, err, want)
    assert tree(workspace) == before
    assert not (workspace / "pwned").exists()


# --- another user's run -------------------------------------------------------------------------

AS_NOBODY = """
import contextlib, io, json, os, sys
import orchestrator.cli, orchestrator.commands, orchestrator.cli_input, orchestrator.cancel
import orchestrator.report, orchestrator.report.html, orchestrator.ls
os.setgid(65534); os.setuid(65534)  # we are root: become another user after the imports
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = orchestrator.cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""
OTHERS_CASES = [
    ("status private", "permission denied"), ("resume private", "permission denied"),
    ("cancel private", "permission denied"), ("report private", "permission denied"),
    ("export-trace private", "permission denied"), ("ls private", "permission denied"),
    ("resume readable", "only its owner can resume"), ("cancel readable", "only its owner can cancel"),
    ("report readable", "give --out"), ("export-trace readable", "give --out"),
    ("submit readable/config.yaml --run-dir readable/sub", "permission denied"),
]


@pytest.fixture(scope="module")
def as_another_user() -> Iterator[dict[str, tuple[int, str, str]]]:
    """Runs owned by root under a world-readable temp dir, one private (0700), one readable (0755);
    every case runs in one subprocess as uid 65534. Yields spec -> (exit code, stdout, stderr)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user (uid 65534)")
    base = Path(tempfile.mkdtemp(prefix="others-", dir="/tmp"))
    try:
        base.chmod(0o755)
        for name, mode in (("private", 0o700), ("readable", 0o755)):
            run = base / name
            run.mkdir()
            (run / "config.yaml").write_text(yaml.safe_dump(load_config_data(dict(BASE)).dump()))
            (run / "journal.jsonl").write_text('{"seq":0,"t":1.0,"event":"run_start","name":"t"}\n')
            (run / "status.json").write_text('{"name": "t", "state": "FAILED"}')
            run.chmod(mode)
        before = tree(base)
        specs = [c[0] for c in OTHERS_CASES] + ["status --json readable"]
        r = subprocess.run([sys.executable, "-c", AS_NOBODY, json.dumps([s.split() for s in specs])], cwd=base,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr
        assert tree(base) == before  # nothing changed by any of them
        yield {s: tuple(res) for s, res in zip(specs, json.loads(r.stdout))}
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("spec,want", OTHERS_CASES, ids=[c[0] for c in OTHERS_CASES])
def test_another_users_run(spec: str, want: str, as_another_user: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = as_another_user[spec]
    assert code == 2, out + err
    assert_one_clean_line(out, "\n".join(l for l in err.splitlines() if not l.startswith("warning:")), want)


def test_another_users_readable_run_status_works(as_another_user: dict[str, tuple[int, str, str]]) -> None:
    """Reading is allowed: a colleague may look at where a run stands."""
    code, out, err = as_another_user["status --json readable"]
    assert code == 0, err
    assert json.loads(out)["state"] == "FAILED"
