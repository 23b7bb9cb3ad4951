"""Slurm host lists: ``node[1-3,7]`` <-> ``["node1", "node2", "node3", "node7"]``.

Slurm prints node sets compressed (sacct, squeue, sinfo, ``SLURM_JOB_NODELIST``) and accepts them
compressed (``--exclude``, ``--nodelist``). The supervisor thinks in single node names, so every
boundary converts through here. Zero padding is kept: ``a[01-03]`` is ``a01 a02 a03``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


class HostlistError(ValueError):
    """A host list Slurm itself would reject (unbalanced brackets, bad range)."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``a[1,2],b`` -> ``["a[1,2]", "b"]``."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' at position {i} in {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise HostlistError(f"unbalanced '[' in {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(item: str, whole: str) -> list[str]:
    """``07-10`` -> ``["07", "08", "09", "10"]``; the width of the low end sets the padding."""
    if "-" not in item:
        if not item.isdigit():
            raise HostlistError(f"bad range item {item!r} in {whole!r}")
        return [item]
    low, _, high = item.partition("-")
    if not (low.isdigit() and high.isdigit()) or int(high) < int(low):
        raise HostlistError(f"bad range {item!r} in {whole!r}")
    width = len(low) if low.startswith("0") else 0
    return [str(n).zfill(width) for n in range(int(low), int(high) + 1)]


def _expand_one(expr: str, whole: str) -> list[str]:
    """Expand one comma-free-at-top-level term; brackets may repeat (``r[1-2]n[1-2]``)."""
    open_at = expr.find("[")
    if open_at < 0:
        if "]" in expr:
            raise HostlistError(f"unbalanced ']' in {whole!r}")
        return [expr]
    close_at = expr.find("]", open_at)
    if close_at < 0:
        raise HostlistError(f"unbalanced '[' in {whole!r}")
    prefix, body, rest = expr[:open_at], expr[open_at + 1:close_at], expr[close_at + 1:]
    if not body:
        raise HostlistError(f"empty brackets in {whole!r}")
    numbers = [n for item in body.split(",") for n in _expand_range(item.strip(), whole)]
    tails = _expand_one(rest, whole) if rest else [""]
    return [f"{prefix}{n}{tail}" for n in numbers for tail in tails]


def expand(hostlist: str) -> list[str]:
    """All host names in ``hostlist``, in Slurm's order, duplicates kept out.

    ``"(null)"``, ``"None assigned"`` and empty strings (what Slurm prints for "no nodes") give ``[]``.
    """
    text = hostlist.strip()
    if text in ("", "(null)", "None assigned", "None"):
        return []
    names: list[str] = []
    seen: set[str] = set()
    for term in _split_top_level(text):
        for name in _expand_one(term, text):
            if name not in seen:
                seen.add(name)
                names.append(name)
    return names


def _follows(prev: str, cur: str) -> bool:
    """``cur`` can share a range with ``prev``: next number, and the zero padding agrees."""
    if int(cur) != int(prev) + 1:
        return False
    padded = (len(prev) > 1 and prev[0] == "0") or (len(cur) > 1 and cur[0] == "0")
    return len(prev) == len(cur) or not padded


def _ranges(numbers: list[tuple[int, str]]) -> list[str]:
    """Sorted ``(value, text)`` -> ``["1-3", "7"]``; ``9,10`` join but ``9,010`` do not."""
    out: list[str] = []
    start = prev = numbers[0]
    for cur in numbers[1:]:
        if _follows(prev[1], cur[1]):
            prev = cur
            continue
        out.append(start[1] if start == prev else f"{start[1]}-{prev[1]}")
        start = prev = cur
    out.append(start[1] if start == prev else f"{start[1]}-{prev[1]}")
    return out


def compress(hosts: Iterable[str]) -> str:
    """The shortest-ish Slurm expression for ``hosts``: ``["n1","n2","n3","x"]`` -> ``"n[1-3],x"``.

    Names group by their prefix before a trailing number; groups keep first-seen order so the output
    is stable. ``expand(compress(h))`` equals ``h`` as a set.
    """
    groups: dict[str, list[tuple[int, str]]] = {}
    plain: dict[str, None] = {}
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        if any(ch in host for ch in "[],"):
            raise HostlistError(f"not a single host name: {host!r}")
        m = _TRAILING_NUMBER.match(host)
        if m is None:
            plain.setdefault(host, None)
            continue
        groups.setdefault(m.group(1), []).append((int(m.group(2)), m.group(2)))
    parts: list[str] = []
    for prefix, numbers in groups.items():
        uniq = sorted(set(numbers), key=lambda t: (t[0], len(t[1])))
        ranges = _ranges(uniq)
        single = len(ranges) == 1 and "-" not in ranges[0]
        parts.append(f"{prefix}{ranges[0]}" if single else f"{prefix}[{','.join(ranges)}]")
    parts.extend(plain)
    return ",".join(parts)


def node_sort_key(name: str) -> tuple[Any, ...]:
    """node2 before node10: the order nodes appear in Slurm's own host lists."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
