"""The per-run telemetry key and the datagram seal (HMAC-SHA256), shared by every sender and the server.

Why: the supervisor listens on the cluster network, which other users share. A datagram is acted on
only if it carries a valid MAC under the run's key (created in the run directory, owner-only) and a
sequence number newer than the last one seen from the same sender, so a forged ``rank_exit`` cannot
exclude a node and a replayed NaN cannot roll anything back.

Wire format: ``MAGIC (3 bytes) | HMAC-SHA256(key, MAGIC | payload) (32 bytes) | payload (JSON)``.
The payload carries ``rank``, ``attempt``, ``sid`` (a random id per sending process) and ``seq``.
Stdlib only: the trainer and the Slurm task import it without torch or pydantic.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

KEY_FILE = "telemetry.key"
ENV_KEY_FILE = "ORCH_TELEMETRY_KEY_FILE"
KEY_BYTES = 32
MAGIC = b"\xa7T1"
TAG_BYTES = 32
HEADER = len(MAGIC) + TAG_BYTES


class TelemetryKeyError(RuntimeError):
    """The key file is missing, unreadable, too short or readable by others."""


def key_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / KEY_FILE


def create_or_load_key(run_dir: str | Path) -> bytes:
    """The run's key: created once (O_EXCL, mode 0600, fsynced), then reused by ``resume``."""
    path = key_path(run_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key(path)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return read_key(path)


def read_key(path: str | Path) -> bytes:
    """Read a key file, refusing one that group or others can read or that is not ours."""
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TelemetryKeyError(f"{path}: mode {stat.S_IMODE(st.st_mode):o}; it must be 600 (chmod 600 {path})")
        if st.st_uid != os.geteuid():
            raise TelemetryKeyError(f"{path}: owned by uid {st.st_uid}, not by this user")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TelemetryKeyError(f"{path}: {exc.strerror}") from None
    if len(data) < KEY_BYTES:
        raise TelemetryKeyError(f"{path}: {len(data)} bytes, {KEY_BYTES} needed")
    return data[:KEY_BYTES]


def key_from_env(env: dict[str, str] | None = None) -> bytes | None:
    """A rank's key: ``ORCH_TELEMETRY_KEY_FILE``, else ``ORCH_RUN_DIR/telemetry.key``; None if neither."""
    env = dict(os.environ) if env is None else env
    path = env.get(ENV_KEY_FILE) or (str(key_path(env["ORCH_RUN_DIR"])) if env.get("ORCH_RUN_DIR") else None)
    if not path:
        return None
    try:
        return read_key(path)
    except TelemetryKeyError:
        return None


def seal(key: bytes, payload: bytes) -> bytes:
    """``payload`` with the header that proves it came from a holder of ``key``."""
    return MAGIC + hmac.digest(key, MAGIC + payload, "sha256") + payload  # one-shot C path


def unseal(key: bytes, raw: bytes) -> tuple[bytes | None, str]:
    """(payload, "") if the MAC is right, else (None, reason): ``no_mac`` or ``bad_mac``."""
    if len(raw) < HEADER or not raw.startswith(MAGIC):
        return None, "no_mac"
    tag, payload = raw[len(MAGIC):HEADER], raw[HEADER:]
    if not hmac.compare_digest(tag, hmac.digest(key, MAGIC + payload, "sha256")):
        return None, "bad_mac"
    return payload, ""


class ReplayGuard:
    """Accepts a (rank, attempt, sender) sequence number only if newer than the last one accepted.

    State grows only for senders that passed the MAC (key holders: the run's own processes), so it is
    bounded by the processes the run starts. A restarted rank is a new sender (new ``sid``) and starts
    its own sequence; an old attempt's sender keeps its own.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[int, int, str], int] = {}

    def fresh(self, rank: int, attempt: int, sid: str, seq: int) -> bool:
        ident = (rank, attempt, sid)
        if seq <= self.last.get(ident, -1):
            return False
        self.last[ident] = seq
        return True
