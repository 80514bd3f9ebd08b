"""From per-question head effects to positive / negative / signed head matrices and top lists."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class HeadMatrices:
    """Head scores, each [layers, heads].

    positive: mean ReLU(base − ablated) over questions answered correctly at baseline.
    negative: mean ReLU(ablated − base) over questions answered wrongly.
    signed:   mean (base − ablated) over all questions.
    """

    positive: np.ndarray
    negative: np.ndarray
    signed: np.ndarray
    n_correct: int
    n_wrong: int
    n_total: int
    top_positive: list[tuple[int, int, float]] = field(default_factory=list)
    top_negative: list[tuple[int, int, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        def rows(m: np.ndarray) -> list[list[float]]:
            return [[float(v) for v in r] for r in m]

        return {
            "positive": rows(self.positive),
            "negative": rows(self.negative),
            "signed": rows(self.signed),
            "counts": {"correct": self.n_correct, "wrong": self.n_wrong, "total": self.n_total},
            "top": {
                "positive": [[l, h, s] for l, h, s in self.top_positive],
                "negative": [[l, h, s] for l, h, s in self.top_negative],
            },
        }


def head_matrices(effects: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """effects: [questions, layers, heads] of base − ablated; correct: [questions] bool."""
    correct = np.asarray(correct, dtype=bool)
    zeros = np.zeros(effects.shape[1:])
    positive = np.maximum(effects[correct], 0).mean(0) if correct.any() else zeros
    negative = np.maximum(-effects[~correct], 0).mean(0) if (~correct).any() else zeros
    signed = effects.mean(0) if len(effects) else zeros
    return positive, negative, signed


def ranked(matrix: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """The k largest strictly positive entries as (layer, head, score), best first; ties by position.
    `allowed` ([L, H] bool) keeps only some heads (e.g. those attribution+verify re-scored)."""
    from vseam_run.modulate import top_heads

    m = np.asarray(matrix, dtype=np.float64)
    return top_heads(m if allowed is None else np.where(allowed, m, 0.0), k)


def score(effects: np.ndarray, correct: np.ndarray, scoring: str, top_k: int, allowed: np.ndarray | None = None) -> HeadMatrices:
    """Matrices plus top lists. `subset` ranks positive/negative matrices; `signed` ranks ±signed."""
    positive, negative, signed = head_matrices(effects, correct)
    if scoring == "subset":
        pos_rank, neg_rank = positive, negative
    else:
        pos_rank, neg_rank = signed, -signed
    n_correct = int(np.asarray(correct, dtype=bool).sum())
    return HeadMatrices(
        positive, negative, signed, n_correct, len(correct) - n_correct, len(correct),
        ranked(pos_rank, top_k, allowed), ranked(neg_rank, top_k, allowed),
    )


def ranking_matrices(effects: np.ndarray, correct: np.ndarray, scoring: str) -> tuple[np.ndarray, np.ndarray]:
    """The two matrices whose top entries are reported (used to pick heads to verify)."""
    positive, negative, signed = head_matrices(effects, correct)
    return (positive, negative) if scoring == "subset" else (signed, -signed)
