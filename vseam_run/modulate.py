"""Stage 5 policies: turn head scores into per-head scale matrices, and pick λ.

A *scale matrix* has shape ``[layers, heads]``; ``heads.py`` multiplies each head's
slice of the ``o_proj`` input by its entry, so 1 leaves a head alone, 0 silences it and
2 doubles its contribution. Every function here accepts and returns either a torch
tensor or a numpy array (whichever it was given), so search results can be used as
they come and tests need no model.

Policies:

* **paper** (the paper's framework figure): the top-K positive heads are enhanced by
  ``1 + λ·pos/max(pos)`` and the top-K negative heads suppressed by ``1 − λ·neg/max(neg)``,
  clipped; K and λ are chosen on the val split (:func:`paper_scales`, :func:`select_grid`).
* **linear** (the *released script's* policy, not the paper's figure):
  ``clip(1 + λ·score, lo, hi)`` on every head with its signed score. The script fixed
  λ = 1 and evaluated in-sample, on 200 of the questions it had scored heads on.
* **top-k**: the k strongest positive heads get ``alpha``, the k strongest negative
  heads get ``beta``, all others 1.
* **learned**: per-head scales fitted by gradient descent (``vseam_run/learned.py``).

Controls: :func:`permuted_scales` puts a policy's scale values on random heads.

λ (and K) are chosen on a validation split by :func:`select_lambda` /
:func:`select_grid`, never on the test split.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_LAMBDA_GRID",
    "LambdaChoice",
    "LambdaPoint",
    "GridChoice",
    "GridPoint",
    "ScoreSource",
    "head_score",
    "linear_scales",
    "paper_scales",
    "permuted_scales",
    "random_heads",
    "select_grid",
    "select_lambda",
    "top_heads",
    "topk_scales",
]

# Includes 0 so "no modulation" always competes: if nothing beats the unmodulated
# model on validation, selection returns λ = 0 rather than a spurious improvement.
DEFAULT_LAMBDA_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)

ScoreSource = Literal["signed", "pos_minus_neg"]

Array = Any  # torch.Tensor | np.ndarray; kept loose so torch stays an optional import here


# ---------------------------------------------------------------------------
# torch / numpy plumbing
# ---------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as_float(x: Array) -> Array:
    """A floating-point copy-free view where possible, keeping the array library."""
    if _is_torch(x):
        return x if x.is_floating_point() else x.float()
    arr = np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _to_numpy(x: Array) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_2d(x: Array, name: str) -> None:
    if len(x.shape) != 2:
        raise ValueError(f"{name} must be a [layers, heads] matrix, got shape {tuple(x.shape)}")


def _ones_like(x: Array) -> Array:
    if _is_torch(x):
        import torch

        return torch.ones_like(x)
    return np.ones_like(x)


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def head_score(
    positive: Array | None,
    negative: Array | None,
    signed: Array | None,
    source: ScoreSource,
) -> Array:
    """The score matrix the linear policy scales by.

    ``"signed"``: the signed effect, mean(base − ablated) over all questions.
    ``"pos_minus_neg"``: positive − negative, i.e. how much a head helps correct
    answers minus how much it props up wrong ones. Only the matrices the chosen source
    needs may be ``None``.
    """
    if source == "signed":
        if signed is None:
            raise ValueError("score source 'signed' needs the signed head scores, which are missing")
        _check_2d(signed, "signed")
        return _as_float(signed)
    if source == "pos_minus_neg":
        if positive is None or negative is None:
            raise ValueError("score source 'pos_minus_neg' needs both positive and negative head scores")
        _check_2d(positive, "positive")
        if tuple(positive.shape) != tuple(negative.shape):
            raise ValueError(
                f"positive and negative scores differ in shape: {tuple(positive.shape)} vs {tuple(negative.shape)}"
            )
        return _as_float(positive) - _as_float(negative)
    raise ValueError(f"unknown score source {source!r}; expected 'signed' or 'pos_minus_neg'")


# ---------------------------------------------------------------------------
# Linear policy
# ---------------------------------------------------------------------------


def linear_scales(score: Array, lam: float, lo: float = 0.0, hi: float = 2.0, eps: float = 0.0) -> Array:
    """Per-head scales ``clip(1 + lam · s, lo, hi)``; ``s`` is ``score`` with ``|score| <= eps`` zeroed.

    ``eps`` keeps heads whose score is search noise exactly at 1. ``lo <= 1 <= hi`` is
    required: a clip range without 1 could not leave any head unchanged, so λ = 0 would
    not mean "no modulation". λ = 0 returns exact ones (even where a score is inf/NaN).
    """
    _check_2d(score, "score")
    if not lo <= 1.0 <= hi:
        raise ValueError(f"clip range must contain 1 (lo <= 1 <= hi), got lo={lo}, hi={hi}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not math.isfinite(lam):
        raise ValueError(f"lambda must be finite, got {lam}")
    s = _as_float(score)
    if lam == 0:
        return _ones_like(s)
    if bool((s != s).any()):  # NaN != NaN; a NaN scale would poison the forward pass
        raise ValueError("score has NaN entries; cannot turn them into scales")
    # `where`, not in-place assignment: the caller's matrix must stay untouched.
    if _is_torch(s):
        import torch

        s = torch.where(s.abs() > eps, s, torch.zeros_like(s))
        return (1.0 + lam * s).clamp(lo, hi)
    s = np.where(np.abs(s) > eps, s, 0.0)
    return np.clip(1.0 + lam * s, lo, hi)


# ---------------------------------------------------------------------------
# Head lists and the top-k policy
# ---------------------------------------------------------------------------


def top_heads(matrix: Array, k: int) -> list[tuple[int, int, float]]:
    """Up to ``k`` heads with score > 0 as ``(layer, head, score)``, strongest first.

    Equal scores are ordered by (layer, head) so the choice is reproducible.
    """
    _check_2d(matrix, "matrix")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    m = _to_numpy(matrix).astype(np.float64)
    flat = m.reshape(-1)
    candidates = np.flatnonzero(flat > 0)  # NaN > 0 is False, so NaNs never qualify
    # lexsort sorts by the last key first: score descending, then flat index ascending.
    order = candidates[np.lexsort((candidates, -flat[candidates]))][:k]
    heads = m.shape[1]
    return [(int(i // heads), int(i % heads), float(flat[i])) for i in order]


def _max_positive(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def topk_scales(positive: Array, negative: Array, k: int, alpha: float, beta: float) -> Array:
    """Ones, except: the top-k positive heads get ``alpha``, the top-k negative heads ``beta``.

    Only heads with a score > 0 are picked, so fewer than k may be changed.

    A head in both lists is resolved by its *normalised* scores, each matrix divided by
    its own maximum (positive and negative scores are averaged over different question
    sets, so raw values are not comparable): the larger one decides, alpha or beta. On
    an exact tie the evidence cancels and the head stays at 1.
    """
    _check_2d(positive, "positive")
    if tuple(positive.shape) != tuple(negative.shape):
        raise ValueError(
            f"positive and negative scores differ in shape: {tuple(positive.shape)} vs {tuple(negative.shape)}"
        )
    pos = _to_numpy(positive).astype(np.float64)
    neg = _to_numpy(negative).astype(np.float64)
    out = np.ones_like(pos)
    pos_set = {(layer, head) for layer, head, _ in top_heads(pos, k)}
    neg_set = {(layer, head) for layer, head, _ in top_heads(neg, k)}
    pos_norm, neg_norm = _max_positive(pos), _max_positive(neg)
    for layer, head in pos_set | neg_set:
        if (layer, head) in pos_set and (layer, head) in neg_set:
            p, n = pos[layer, head] / pos_norm, neg[layer, head] / neg_norm
            out[layer, head] = alpha if p > n else beta if n > p else 1.0
        else:
            out[layer, head] = alpha if (layer, head) in pos_set else beta
    if _is_torch(positive):
        import torch

        dtype = positive.dtype if positive.is_floating_point() else torch.float32
        return torch.as_tensor(out, dtype=dtype, device=positive.device)
    return out


def random_heads(
    num_layers: int,
    num_heads: int,
    k: int,
    rng: np.random.Generator | int,
    exclude: Iterable[tuple[int, int]] = (),
) -> list[tuple[int, int]]:
    """``k`` distinct heads drawn uniformly, none in ``exclude``, sorted by (layer, head).

    The control for ablation: random heads, disjoint from the ones being tested, so a
    drop seen for the searched heads can be compared against chance. ``rng`` may be a
    numpy Generator or a seed.
    """
    if num_layers < 1 or num_heads < 1:
        raise ValueError(f"need at least one layer and head, got {num_layers} x {num_heads}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    excluded = {(int(layer), int(head)) for layer, head in exclude}
    pool = [(layer, head) for layer in range(num_layers) for head in range(num_heads) if (layer, head) not in excluded]
    if k > len(pool):
        raise ValueError(
            f"cannot draw {k} random heads: only {len(pool)} of {num_layers * num_heads} remain after excluding {len(excluded)}"
        )
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    picked = gen.choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in picked)


# ---------------------------------------------------------------------------
# λ selection
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The paper's policy: top-K positive heads up, top-K negative heads down
# ---------------------------------------------------------------------------


def paper_scales(positive: Array, negative: Array, k: int, lam: float, lo: float = 0.0, hi: float = 2.0) -> Array:
    """The paper's framework-figure policy, as a scale matrix.

    Each of the top-``k`` positive heads (score > 0) gets ``+λ·pos/max(pos)``, each of the
    top-``k`` negative heads ``−λ·neg/max(neg)``, added to 1 and clipped to ``[lo, hi]``;
    every other head stays exactly 1. The maxima are over all heads (the strongest head of
    each kind reaches ``1 ± λ``). Normalising each matrix by its own maximum also makes the
    two comparable, since they are averaged over different question sets; a head in both
    lists gets both terms, so equal normalised evidence cancels. λ = 0 returns exact ones.
    """
    _check_2d(positive, "positive")
    if tuple(positive.shape) != tuple(negative.shape):
        raise ValueError(
            f"positive and negative scores differ in shape: {tuple(positive.shape)} vs {tuple(negative.shape)}"
        )
    if not lo <= 1.0 <= hi:
        raise ValueError(f"clip range must contain 1 (lo <= 1 <= hi), got lo={lo}, hi={hi}")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda must be finite and >= 0, got {lam}")
    pos = _to_numpy(positive).astype(np.float64)
    neg = _to_numpy(negative).astype(np.float64)
    delta = np.zeros_like(pos)
    if lam > 0:
        pos_norm, neg_norm = _max_positive(pos), _max_positive(neg)
        for layer, head, value in top_heads(pos, k):
            delta[layer, head] += lam * value / pos_norm
        for layer, head, value in top_heads(neg, k):
            delta[layer, head] -= lam * value / neg_norm
    out = np.where(delta == 0, 1.0, np.clip(1.0 + delta, lo, hi))
    if _is_torch(positive):
        import torch

        dtype = positive.dtype if positive.is_floating_point() else torch.float32
        return torch.as_tensor(out, dtype=dtype, device=positive.device)
    return out


class GridPoint(NamedTuple):
    """One parameter setting and the validation accuracy it reached."""

    params: dict[str, float]
    val_accuracy: float


class GridChoice(NamedTuple):
    """The chosen setting and every setting tried, in grid order."""

    best: dict[str, float]
    table: list[GridPoint]


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


# ---------------------------------------------------------------------------
# Controls: the same scale values on random heads
# ---------------------------------------------------------------------------


def permuted_scales(scales: Array, rng: np.random.Generator | int) -> Array:
    """The same scale values moved to randomly chosen heads: a permutation over heads.

    ``scales`` is ``[layers, heads]`` or ``[layers, groups, heads]`` (per position group);
    heads are permuted over all ``layers × heads`` slots, a head's values in every group
    moving together. So the control changes exactly as many heads as the policy, by
    exactly the same amounts, and differs only in *which* heads.
    """
    if len(scales.shape) not in (2, 3):
        raise ValueError(f"scales must be [layers, heads] or [layers, groups, heads], got shape {tuple(scales.shape)}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    arr = _to_numpy(scales)
    layers, heads = arr.shape[0], arr.shape[-1]
    # Put the head axis first, flattened with layers: [layers*heads, groups or 1].
    slots = np.moveaxis(arr.reshape(layers, -1, heads), 2, 1).reshape(layers * heads, -1)
    moved = slots[gen.permutation(layers * heads)]
    out = np.moveaxis(moved.reshape(layers, heads, -1), 1, 2).reshape(arr.shape)
    if _is_torch(scales):
        import torch

        return torch.as_tensor(out, dtype=scales.dtype, device=scales.device)
    return out
