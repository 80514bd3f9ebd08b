"""Numbers and heads printed for people: `L3.H4 0.048`, float noise as 0, 3 significant digits."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# Below this magnitude a score is float round-off (sums of probabilities near 1 leave ~1e-17).
NOISE = 1e-9


def num(value: float | None, digits: int = 3) -> str:
    """`digits` significant digits; |x| < 1e-9 as 0; integers as integers; None/NaN as —."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    v = float(value)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if abs(v) < NOISE:
        return "0"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    if abs(v) >= 1:
        int_digits = len(str(int(abs(v))))
        return f"{v:.{max(0, digits - int_digits)}f}"
    return f"{v:.{max(digits, 1) + _leading_zeros(v)}f}"


def _leading_zeros(v: float) -> int:
    """0.048 → 1 (one zero after the point before the first significant digit)."""
    return max(0, -int(math.floor(math.log10(abs(v)))) - 1)


def head(layer: int, head_: int) -> str:
    return f"L{int(layer)}.H{int(head_)}"


def heads(top: Iterable[Sequence[float]], limit: int | None = 3) -> str:
    """`L3.H4 0.048, L1.H0 0.031` from (layer, head, score) triples; `none` when empty."""
    items = list(top)[: limit if limit is not None else None]
    return ", ".join(f"{head(t[0], t[1])} {num(float(t[2]), 2)}" for t in items) or "none"
