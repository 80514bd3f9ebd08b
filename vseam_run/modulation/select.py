"""Choosing a policy's free parameters on the val split: one λ (:func:`select_lambda`) or a grid
of settings (:func:`select_grid`), ties to the gentler intervention. Never on the test split."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

# Includes 0 so "no modulation" always competes: if nothing beats the unmodulated
# model on validation, selection returns λ = 0 rather than a spurious improvement.
DEFAULT_LAMBDA_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


class LambdaPoint(NamedTuple):
    """One λ and the validation accuracy it reached."""

    lam: float
    val_accuracy: float


class LambdaChoice(NamedTuple):
    """The chosen λ and every (λ, validation accuracy) tried, in grid order."""

    best: float
    table: list[LambdaPoint]


# Accuracies within this of each other count as tied: they are ratios of small counts,
# and float noise must not decide between two λ that got the same number right.
_TIE_TOL = 1e-12


def select_lambda(grid: Sequence[float], evaluate: Callable[[float], float]) -> LambdaChoice:
    """Evaluate each λ of ``grid`` (duplicates once) and return the most accurate.

    Ties go to the smaller |λ| (the gentler intervention explains the same accuracy),
    then to the positive λ. A NaN accuracy counts as worst.
    """
    lams = list(dict.fromkeys(float(x) for x in grid))
    if not lams:
        raise ValueError("lambda grid is empty")
    if bad := [x for x in lams if not math.isfinite(x)]:
        raise ValueError(f"lambda grid has non-finite values: {bad}")
    table = [LambdaPoint(lam, float(evaluate(lam))) for lam in lams]

    def acc(point: LambdaPoint) -> float:
        return -math.inf if math.isnan(point.val_accuracy) else point.val_accuracy

    top = max(acc(p) for p in table)
    tied = [p for p in table if acc(p) >= top - _TIE_TOL]
    best = min(tied, key=lambda p: (abs(p.lam), p.lam < 0))
    return LambdaChoice(best.lam, table)


class GridPoint(NamedTuple):
    """One parameter setting and the validation accuracy it reached."""

    params: dict[str, float]
    val_accuracy: float


class GridChoice(NamedTuple):
    """The chosen setting and every setting tried, in grid order."""

    best: dict[str, float]
    table: list[GridPoint]

    def rows(self) -> list[dict[str, float]]:
        """The table as records (each setting's parameters and its val accuracy), for a run document."""
        return [{**p.params, "val_accuracy": p.val_accuracy} for p in self.table]


def select_grid(
    candidates: Sequence[dict[str, float]],
    evaluate: Callable[[dict[str, float]], float],
    gentleness: Callable[[dict[str, float]], tuple],
) -> GridChoice:
    """Evaluate every candidate setting and return the most accurate one.

    Ties go to the smallest ``gentleness(params)`` (e.g. ``(λ, K)``: the gentler
    intervention explains the same accuracy). A NaN accuracy counts as worst.
    """
    if not candidates:
        raise ValueError("parameter grid is empty")
    table = [GridPoint(dict(c), float(evaluate(dict(c)))) for c in candidates]

    def acc(point: GridPoint) -> float:
        return -math.inf if math.isnan(point.val_accuracy) else point.val_accuracy

    top = max(acc(p) for p in table)
    best = min((p for p in table if acc(p) >= top - _TIE_TOL), key=lambda p: gentleness(p.params))
    return GridChoice(best.params, table)
