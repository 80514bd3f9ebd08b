"""How sure a head search is of its scores: bootstrap over the searched questions.

A search averages per-question effects ``[Q, L, H]`` (base − ablated gold probability).
Resampling the questions with replacement and recomputing the head matrices gives, per
head, a percentile interval of each score and, per top-k head, how often it stays in the
top-k (its *stability*). The same resampled rankings feed `vseam share`'s intervals, so
both use one definition.

The per-question effects are also what a later query needs to resample a finished run;
`encode_effects` / `decode_effects` store them compactly (float32, base64) in a document.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from vseam_run.search.scoring import head_matrices

# Resampling draws weights [B, Q] in chunks so memory stays bounded for large Q and B.
_CHUNK = 64


@dataclass
class ResampledRankings:
    """Ranking matrices of one bootstrap chunk: [B, L, H] for the positive and negative lists."""

    positive: np.ndarray
    negative: np.ndarray
    signed: np.ndarray
    pos_rank: np.ndarray
    neg_rank: np.ndarray
    positive_net: np.ndarray  # mean (base − ablated) over correct questions, without the ReLU
    negative_net: np.ndarray  # mean (ablated − base) over wrong questions, without the ReLU


def _weighted_matrices(effects: np.ndarray, correct: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """head_matrices for a batch of resamples given as question-count weights [B, Q]."""
    q, layers, heads = effects.shape
    flat = effects.reshape(q, layers * heads)
    w_right, w_wrong = weights * correct[None, :], weights * ~correct[None, :]
    n_right, n_wrong = w_right.sum(1, keepdims=True), w_wrong.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        # A resample without a correct (or wrong) question has no positive (negative) score:
        # 0, as head_matrices gives for an empty subset.
        positive = np.where(n_right > 0, w_right @ np.maximum(flat, 0) / n_right, 0.0)
        negative = np.where(n_wrong > 0, w_wrong @ np.maximum(-flat, 0) / n_wrong, 0.0)
        positive_net = np.where(n_right > 0, w_right @ flat / n_right, 0.0)
        negative_net = np.where(n_wrong > 0, w_wrong @ -flat / n_wrong, 0.0)
    signed = weights @ flat / weights.sum(1, keepdims=True)
    shape = (len(weights), layers, heads)
    return tuple(m.reshape(shape) for m in (positive, negative, signed, positive_net, negative_net))


def resample(effects: np.ndarray, correct: np.ndarray, scoring: str, n_boot: int, seed: int) -> Iterator[ResampledRankings]:
    """Bootstrap resamples of the questions (multinomial counts), yielded in chunks."""
    effects = np.asarray(effects, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    q = len(effects)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(_CHUNK, n_boot - done)
        weights = rng.multinomial(q, np.full(q, 1.0 / q), size=b).astype(np.float64)
        pos, neg, signed, pos_net, neg_net = _weighted_matrices(effects, correct, weights)
        if scoring == "subset":
            yield ResampledRankings(pos, neg, signed, pos, neg, pos_net, neg_net)
        else:
            yield ResampledRankings(pos, neg, signed, signed, -signed, pos_net, neg_net)
        done += b


def top_mask(rank: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """[..., L, H] bool: the k largest strictly positive entries of each matrix (the top list's
    rule, see `scoring.ranked`; ties broken by position as there)."""
    m = np.asarray(rank, dtype=np.float64)
    if allowed is not None:
        m = np.where(allowed, m, 0.0)
    lead, (layers, heads) = m.shape[:-2], m.shape[-2:]
    flat = m.reshape(-1, layers * heads)
    # Stable sort of −score keeps the lower (layer, head) first among ties, like `ranked`.
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    mask = np.zeros_like(flat, dtype=bool)
    rows = np.arange(len(flat))[:, None]
    mask[rows, order] = np.take_along_axis(flat, order, axis=1) > 0
    return mask.reshape(*lead, layers, heads)


@dataclass
class HeadUncertainty:
    """Percentile intervals of every head score and the stability of the top-k heads."""

    n_boot: int
    level: float
    low: dict[str, np.ndarray]  # score kind → [L, H]
    high: dict[str, np.ndarray]
    stability: dict[str, np.ndarray]  # "positive"/"negative" → [L, H] share of resamples in the top-k

    def excludes_zero(self, kind: str) -> np.ndarray:
        """[L, H] bool: the head's mean effect is away from 0 at the interval's level.

        positive / negative scores are means of ReLU(...), never below 0, so their own
        interval excludes 0 as soon as a few questions move at all; what is tested for them
        is the mean effect on the same questions without the ReLU (``positive_net``: base −
        ablated over correct questions; ``negative_net``: ablated − base over wrong ones)
        being above 0. signed: the interval lies on one side of 0."""
        if kind in ("positive", "negative") and f"{kind}_net" in self.low:
            return self.low[f"{kind}_net"] > 0
        return (self.low[kind] > 0) | (self.high[kind] < 0)

    def to_json(self) -> dict[str, Any]:
        def rows(m: np.ndarray) -> list[list[float]]:
            return [[float(v) for v in r] for r in m]

        return {
            "n_boot": self.n_boot,
            "level": self.level,
            "low": {k: rows(v) for k, v in self.low.items()},
            "high": {k: rows(v) for k, v in self.high.items()},
            "top_k_stability": {k: rows(v) for k, v in self.stability.items()},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HeadUncertainty:
        arr = lambda d: {k: np.asarray(v, dtype=np.float64) for k, v in d.items()}  # noqa: E731
        return cls(int(doc["n_boot"]), float(doc["level"]), arr(doc["low"]), arr(doc["high"]), arr(doc["top_k_stability"]))


def head_uncertainty(
    effects: np.ndarray,
    correct: np.ndarray,
    scoring: str,
    top_k: int,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    allowed: np.ndarray | None = None,
) -> HeadUncertainty:
    """Bootstrap the questions `n_boot` times: percentile intervals of positive, negative and
    signed scores, and per head the share of resamples in which it is in the top-k list."""
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    draws: dict[str, list[np.ndarray]] = {k: [] for k in ("positive", "negative", "signed", "positive_net", "negative_net")}
    in_top = {"positive": 0.0, "negative": 0.0}
    for chunk in resample(effects, correct, scoring, n_boot, seed):
        for kind, parts in draws.items():
            parts.append(getattr(chunk, kind))
        in_top["positive"] = in_top["positive"] + top_mask(chunk.pos_rank, top_k, allowed).sum(0)
        in_top["negative"] = in_top["negative"] + top_mask(chunk.neg_rank, top_k, allowed).sum(0)
    alpha = (1 - level) / 2
    low, high = {}, {}
    for kind, parts in draws.items():
        stacked = np.concatenate(parts)
        low[kind], high[kind] = np.quantile(stacked, [alpha, 1 - alpha], axis=0)
    shape = np.asarray(effects).shape[1:]
    stability = {k: np.broadcast_to(np.asarray(v, dtype=np.float64) / n_boot, shape).copy() for k, v in in_top.items()}
    return HeadUncertainty(n_boot, level, low, high, stability)


def point_matrices(effects: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unresampled matrices (re-exported so callers need one module)."""
    return head_matrices(np.asarray(effects, dtype=np.float64), np.asarray(correct, dtype=bool))


# ---------------------------------------------------------------------- storage


def encode_effects(qids: list[str], effects: np.ndarray, correct: np.ndarray, base_prob: np.ndarray,
                   verified: np.ndarray | None = None) -> dict[str, Any]:
    """A JSON document holding the per-question effects exactly as float32 (base64, little-endian)."""
    e = np.ascontiguousarray(np.asarray(effects, dtype="<f4"))
    return {
        "format": "float32-base64",
        "shape": list(e.shape),
        "qids": list(qids),
        "correct": [bool(c) for c in np.asarray(correct)],
        "base_prob": [float(p) for p in np.asarray(base_prob)],
        "verified": None if verified is None else [[bool(v) for v in r] for r in verified],
        "effects": base64.b64encode(e.tobytes()).decode("ascii"),
    }


@dataclass
class StoredEffects:
    qids: list[str]
    effects: np.ndarray  # [Q, L, H] float32
    correct: np.ndarray
    base_prob: np.ndarray
    verified: np.ndarray | None


def decode_effects(doc: dict[str, Any]) -> StoredEffects:
    if doc.get("format") != "float32-base64":
        raise ValueError(f"unknown effects document format {doc.get('format')!r}")
    e = np.frombuffer(base64.b64decode(doc["effects"]), dtype="<f4").reshape(doc["shape"])
    ver = doc.get("verified")
    return StoredEffects(list(doc["qids"]), e.astype(np.float32), np.asarray(doc["correct"], dtype=bool),
                         np.asarray(doc["base_prob"], dtype=np.float64), None if ver is None else np.asarray(ver, dtype=bool))
