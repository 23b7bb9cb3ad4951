"""The packed columns of a node aggregate: its ranks' step rows and last-heard ages as binary columns.

Why: at 16,384 ranks the supervisor reads ~4k aggregates a second, 8 ranks each. As JSON lists every
row costs a parsed list, three parsed numbers and a Python check; packed little-endian columns (base64
in the aggregate's JSON, covered by its MAC) are one string to parse and one ``struct.unpack``, checked
with min/max over each column, and the receive path updates its per-rank dicts from the columns in bulk.
(numpy was tried: on 8-rank arrays its per-call overhead cost more than the JSON it replaced.)

A field that does not decode drops every record it held (counted as one malformed record, since its
length is unknown); a record that decodes but is out of range is dropped alone, as a malformed JSON row
was.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

MAX_RANK = 1 << 20
INF = float("inf")
ROW_BYTES = 4 + 8 + 8  # rank i32, step i64, compute seconds f64 (NaN: unknown)
ENTRY_BYTES = 4 + 8 + 8 + 8  # rank i32, seconds since last heard f64, step i64, pid i64 (-1: unknown)


class Rows(NamedTuple):
    """Step rows as columns (tuples or lists), in arrival order."""
    rank: Sequence[int]
    step: Sequence[int]
    secs: Sequence[float]

    def __len__(self) -> int:
        return len(self.rank)

    def tolist(self) -> list[tuple[int, int, float]]:
        return list(zip(self.rank, self.step, self.secs))


class Entries(NamedTuple):
    """Rank entries as columns: who the agent heard, how long ago, at which step, with which pid."""
    rank: Sequence[int]
    age: Sequence[float]
    step: Sequence[int]
    pid: Sequence[int]

    def __len__(self) -> int:
        return len(self.rank)


NO_ROWS = Rows((), (), ())
NO_ENTRIES = Entries((), (), (), ())


def _int(v: Any) -> int:
    return v if type(v) is int and -1 <= v < 1 << 62 else -1


def pack_rows(rows: list[tuple[int, int, float | None]]) -> str:
    """[(rank, step, compute seconds or None)] as the aggregate's ``cols`` text."""
    n = len(rows)
    data = struct.pack(f"<{n}i{n}q{n}d", *(r[0] for r in rows), *(r[1] for r in rows),
                       *(float("nan") if r[2] is None else r[2] for r in rows))
    return binascii.b2a_base64(data, newline=False).decode()


def pack_entries(entries: list[list[Any]]) -> str:
    """[[rank, seconds since last heard, step, pid, phase]] (phase apart) as the aggregate's ``ranks`` text."""
    n = len(entries)
    data = struct.pack(f"<{n}i{n}d{n}q{n}q", *(e[0] for e in entries), *(float(e[1]) for e in entries),
                       *(_int(e[2]) for e in entries), *(_int(e[3]) for e in entries))
    return binascii.b2a_base64(data, newline=False).decode()


_ROW_FMT: dict[int, struct.Struct] = {}
_ENTRY_FMT: dict[int, struct.Struct] = {}


def _decode(text: Any, width: int, formats: dict[int, struct.Struct], fmt: str) -> tuple[int, tuple[Any, ...]] | None:
    if type(text) is not str:
        return None
    try:
        buf = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    n = len(buf) // width
    if len(buf) != n * width:
        return None
    unpack = formats.get(n)
    if unpack is None:
        unpack = formats[n] = struct.Struct(fmt.format(n=n))
    return n, unpack.unpack(buf)


def unpack_rows(text: Any) -> tuple[Rows, int]:
    """(the valid rows, how many were dropped): a rank in range, a step ≥ 0, seconds ≥ 0 or NaN."""
    if not text:
        return NO_ROWS, 0 if text in (None, "") else 1
    got = _decode(text, ROW_BYTES, _ROW_FMT, "<{n}i{n}q{n}d")
    if got is None:
        return NO_ROWS, 1
    n, v = got
    rank, step, secs = v[:n], v[n:2 * n], v[2 * n:]
    total = sum(secs)  # NaN if any is unknown, inf if any is infinite: then the slow path
    if n and min(rank) >= 0 and max(rank) < MAX_RANK and min(step) >= 0 and total < INF and min(secs) >= 0.0:
        return Rows(rank, step, secs), 0
    keep = [i for i, (r, s, t) in enumerate(zip(rank, step, secs))
            if 0 <= r < MAX_RANK and s >= 0 and (t != t or 0.0 <= t < INF)]
    return Rows([rank[i] for i in keep], [step[i] for i in keep], [secs[i] for i in keep]), n - len(keep)


def unpack_entries(text: Any, phases: Any) -> tuple[Entries, list[Any] | None, int]:
    """(the valid entries, their phases or None when every one is "step", how many were dropped)."""
    if not text:
        return NO_ENTRIES, None, 0 if text in (None, "") else 1
    got = _decode(text, ENTRY_BYTES, _ENTRY_FMT, "<{n}i{n}d{n}q{n}q")
    if got is None:
        return NO_ENTRIES, None, 1
    n, v = got
    if phases is not None and (type(phases) is not list or len(phases) != n
                               or any(p is not None and type(p) is not str for p in phases)):
        return NO_ENTRIES, None, max(1, n)
    rank, age = v[:n], v[n:2 * n]
    if n and min(rank) >= 0 and max(rank) < MAX_RANK and min(age) >= 0.0 and sum(age) < 1e6:  # NaN fails too
        return Entries(rank, age, v[2 * n:3 * n], v[3 * n:]), phases, 0
    keep = [i for i, (r, a) in enumerate(zip(rank, age)) if 0 <= r < MAX_RANK and 0.0 <= a < 1e6]
    return (Entries(*([col[i] for i in keep] for col in (rank, age, v[2 * n:3 * n], v[3 * n:]))),
            None if phases is None else [phases[i] for i in keep], n - len(keep))
