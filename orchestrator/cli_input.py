"""Checks on what a person typed, made before a command reads or writes anything.

Why one module: every subcommand takes a run directory or a run.yaml, and the same mistake (a file
for a directory, a run that never started, another user's run, a run directory caught mid-write)
must give the same one-line answer and exit 2, with nothing in the directory touched. The CLI turns
a :class:`BadInput` into ``error: <message>``.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path
from typing import Any

import yaml

from orchestrator import rundir
from spec.config import RunConfig
from orchestrator.config_load import ConfigError
from orchestrator.journal import JOURNAL_FILE
from orchestrator.snapshot import STATUS_FILE, RunSnapshot

CONFIG_FILE = rundir.CONFIG_FILE
#: files a command reads from a run directory; each must be a regular file (a FIFO would block a read)
RUN_FILES = (CONFIG_FILE, JOURNAL_FILE, STATUS_FILE, "metrics.jsonl")


class BadInput(Exception):
    """Unusable command-line input; the message is one line that names the path and the problem."""


def owner_of(path: Path) -> str:
    """The user name owning ``path`` (the uid when it has no name), for "owned by X" messages."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def existing_dir(path: str | Path, what: str = "run directory") -> Path:
    """``path`` as a readable directory, or BadInput saying why it is not one."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise BadInput(f"{p}: no such {what}") from None
    except NotADirectoryError:
        raise BadInput(f"{p}: no such {what} (a parent of it is a file)") from None
    except PermissionError:
        raise BadInput(f"{p}: permission denied: a parent directory is not readable by you") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{p}: is a file, not a {what} (give the directory, e.g. runs/<name>)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise BadInput(f"{p}: permission denied: owned by {owner_of(p)} and not readable by you")
    _only_regular_files(p)
    return p


def _only_regular_files(run_dir: Path) -> None:
    """A FIFO, socket or device where a run file belongs would hang or mislead a reader: refuse it."""
    for name in RUN_FILES:
        try:
            mode = (run_dir / name).stat().st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            raise BadInput(f"{run_dir / name}: not a regular file; this is not a run directory written by "
                           "orchestrator")


def run_dir_arg(path: str | Path, *, started: bool = False, writable: bool = False,
                verb: str = "use") -> Path:
    """A run directory that holds a config (and a journal if ``started``, write access if ``writable``)."""
    p = existing_dir(path)
    if not (p / CONFIG_FILE).is_file():
        being_made = (p / f".{CONFIG_FILE}.tmp").exists()
        hint = ("it is being created (retry in a moment)" if being_made
                else "run directories are made by `orchestrator submit`")
        raise BadInput(f"{p}: not a run directory: no {CONFIG_FILE} ({hint})")
    if started and not (p / JOURNAL_FILE).is_file():
        raise BadInput(f"{p}: the run never started (no {JOURNAL_FILE}): nothing to {verb}; start it with "
                       f"`orchestrator submit {p / CONFIG_FILE} --run-dir NEW_DIR`")
    if writable and not os.access(p, os.W_OK):
        raise BadInput(f"{p}: not writable by you (owned by {owner_of(p)}): only its owner can {verb} it")
    return p


def run_config(run_dir: Path) -> RunConfig:
    """The run's resolved config; a torn or edited config.yaml is BadInput, not a traceback."""
    path = run_dir / CONFIG_FILE
    try:
        return rundir.load(run_dir)
    except ConfigError as exc:
        first = exc.issues[0] if exc.issues else "invalid"
        raise BadInput(f"{path}: not a valid run config ({first})") from None
    except yaml.YAMLError:
        raise BadInput(f"{path}: torn or not YAML (a run directory mid-write, or edited by hand)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def run_status(run_dir: Path) -> dict[str, Any]:
    """status.json as a full snapshot dict (missing keys at their defaults); BadInput when unusable."""
    path = run_dir / STATUS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        if (run_dir / CONFIG_FILE).is_file():
            raise BadInput(f"{run_dir}: the run never started (no {STATUS_FILE} yet)") from None
        raise BadInput(f"{run_dir}: not a run directory (no {STATUS_FILE}, no {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError:
        raise BadInput(f"{path}: torn or not JSON (written by another tool, or a copy caught mid-write); "
                       "the journal still has the run's history: `orchestrator report`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), str):
        raise BadInput(f"{path}: not an orchestrator status file (no state)")
    return normalised_status(doc)


def normalised_status(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill what an older or partial status.json lacks from a fresh snapshot's defaults."""
    base = RunSnapshot().to_dict()
    out = {**base, **doc}
    lost = doc.get("lost")
    out["lost"] = {**base["lost"], **(lost if isinstance(lost, dict) else {})}
    for key in ("faults", "excluded_nodes", "active_nodes", "jobs"):
        if not isinstance(out.get(key), list):
            out[key] = []
    out["faults"] = [f for f in out["faults"] if isinstance(f, dict)]
    return out


def writable_output(run_dir: Path, out: str | None, default: str) -> Path:
    """Where a report or trace goes: ``out`` if given, else ``run_dir/default``, which must be writable."""
    if out:
        return Path(out)
    if not os.access(run_dir, os.W_OK):
        raise BadInput(f"{run_dir}: not writable by you (owned by {owner_of(run_dir)}); give --out FILE")
    return run_dir / default
