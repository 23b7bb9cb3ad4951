"""Burn-in: the probe a node passes before the lemon-node store lets it back in after a ``hardware``
verdict (a replay found it computing wrong results).

The node probe (disk, memory, kernel log) is not enough for silent data corruption: the GPU answers,
just wrongly. So the burn-in adds a deterministic compute check against a known answer: two chained
matrix products of small integer-valued matrices, which are exact in fp32 on any hardware (every partial
sum stays below 2**24), reduced to one integer checksum and compared with ``KNOWN_CHECKSUM`` (computed
in pure Python integers; ``tests/test_replay_rules.py`` recomputes it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from health.probes.result import ProbeResult

N = 64
KNOWN_CHECKSUM = 2305843008629980575  # reference_checksum(); a test recomputes it


def _matrix(seed: int, n: int = N) -> list[list[int]]:
    """Integers in [-8, 8] from a fixed linear congruential generator (no library's RNG to drift)."""
    x, out = seed, []
    for _ in range(n):
        row = []
        for _ in range(n):
            x = (1103515245 * x + 12345) % (1 << 31)
            row.append((x >> 16) % 17 - 8)
        out.append(row)
    return out


def _checksum(m: list[list[int]]) -> int:
    return sum((31 * i + j + 1) * v for i, row in enumerate(m) for j, v in enumerate(row)) % (1 << 61)


def reference_checksum() -> int:
    """The known answer, in pure Python integers (no floating point, no device)."""
    a, b, c = _matrix(1), _matrix(2), _matrix(3)
    ab = [[sum(a[i][k] * b[k][j] for k in range(N)) for j in range(N)] for i in range(N)]
    abc = [[sum(ab[i][k] * c[k][j] for k in range(N)) for j in range(N)] for i in range(N)]
    return _checksum(abc)


def device_checksum(device: str = "cpu") -> int:
    """The same products on the device, in fp32 (exact here), back to integers."""
    import torch
    a, b, c = (torch.tensor(_matrix(s), dtype=torch.float32, device=device) for s in (1, 2, 3))
    abc = (a @ b) @ c
    if device != "cpu":
        torch.cuda.synchronize()
    return _checksum([[int(v) for v in row] for row in abc.round().to(torch.int64).cpu().tolist()])


def compute_check(node: str, device: str = "cpu",
                  checksum: Callable[[str], int] = device_checksum) -> ProbeResult:
    """``checksum`` is the device's answer (a parameter, so a test can stand in for a faulty GPU)."""
    t0 = time.perf_counter()
    try:
        got = checksum(device)
    except Exception as exc:  # noqa: BLE001 - a crash in the check is a failed check
        return ProbeResult("burn_in", node, "failed", {"error": f"{type(exc).__name__}: {exc}"}, "sdc")
    ok = got == KNOWN_CHECKSUM
    ev = {"device": device, "checksum": got, "expected": KNOWN_CHECKSUM, "seconds": round(time.perf_counter() - t0, 4)}
    if not ok:
        ev["reason"] = "matrix products differ from the known answer: the device computes wrong results"
    return ProbeResult("burn_in", node, "ok" if ok else "failed", ev, None if ok else "sdc")


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"

