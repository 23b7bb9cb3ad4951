"""Human-readable numbers for the plan tables (the JSON form keeps raw SI values)."""

from __future__ import annotations

import math

GIB = 1024**3


def count(n: float) -> str:
    """1.23B, 45.6M, 7.8K: parameter and token counts."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def gib(b: float) -> str:
    """Bytes in GiB, or MiB/KiB when a small model would otherwise print as 0.00 GiB."""
    for div, unit in ((GIB, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if b >= div or unit == "KiB":
            return f"{b / div:.2f} {unit}"
    return f"{b:.0f} B"


def duration(s: float) -> str:
    """Seconds as s, min, h or days, whichever reads best."""
    if not math.isfinite(s):
        return "never"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def sci(x: float) -> str:
    return f"{x:.3g}"
