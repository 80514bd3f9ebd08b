"""Head search: one entry point, four strategies, one scoring."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from vseam_run.search.scoring import HeadMatrices, ranked, ranking_matrices, score
from vseam_run.search.strategies import (
    Effects,
    SearchItem,
    attribution_effects,
    exact_effects,
    reference_effects,
)
from vseam_run.vlm import VLM

STRATEGIES = ("reference", "exact", "attribution", "attribution+verify")


class Checkpointer(Protocol):
    """Where finished layers are saved so an interrupted search resumes (the run registry)."""

    def load(self) -> dict[str, Any]: ...

    def save(self, key: str, payload: Any) -> None: ...


@dataclass
class SearchResult:
    strategy: str
    scoring: str
    qids: list[str]
    effects: np.ndarray  # [Q, L, H] base − ablated
    base_prob: np.ndarray
    correct: np.ndarray
    matrices: HeadMatrices
    seconds: float
    verified: np.ndarray | None = None  # [L, H] bool for attribution+verify
    top_k: int = 10
    # attribution(+verify): layers where first order failed its own check and that were searched
    # exactly instead (strategies.attribution_effects); their scores are exact ones.
    exact_layers: list[int] = field(default_factory=list)

    def to_state(self) -> dict:
        """Everything needed to rebuild this result exactly (`from_state`): the per-question
        effects as JSON floats, which round-trip float64 values bit for bit."""
        return {
            "strategy": self.strategy, "scoring": self.scoring, "qids": self.qids, "top_k": self.top_k,
            "effects": self.effects.tolist(), "base_prob": self.base_prob.tolist(),
            "correct": [bool(c) for c in self.correct], "seconds": self.seconds,
            "verified": None if self.verified is None else self.verified.tolist(),
            "exact_layers": list(self.exact_layers),
        }

    @classmethod
    def from_state(cls, state: dict) -> "SearchResult":
        effects = np.asarray(state["effects"], dtype=np.float64)
        correct = np.asarray(state["correct"], dtype=bool)
        verified = None if state["verified"] is None else np.asarray(state["verified"], dtype=bool)
        matrices = score(effects, correct, state["scoring"], state["top_k"], allowed=verified)
        return cls(state["strategy"], state["scoring"], list(state["qids"]), effects,
                   np.asarray(state["base_prob"], dtype=np.float64), correct, matrices, state["seconds"], verified, state["top_k"],
                   list(state.get("exact_layers", [])))

    def to_json(self) -> dict:
        out = self.matrices.to_json()
        out["strategy"] = self.strategy
        out["scoring"] = self.scoring
        if self.verified is not None:
            out["verified"] = [[bool(v) for v in r] for r in self.verified]
        if self.exact_layers:
            out["exact_layers"] = list(self.exact_layers)
        return out


def verify_candidates(effects: np.ndarray, correct: np.ndarray, scoring: str, verify_k: int) -> np.ndarray:
    """The verify_k heads to re-score exactly: taken in turn from the estimated positive and
    negative rankings (so both top lists get candidates), then by |signed| if budget is left."""
    pos, neg = ranking_matrices(effects, correct, scoring)
    n = pos.size
    budget = min(verify_k, n)
    order: list[tuple[int, int]] = []
    pos_list, neg_list = ranked(pos, n), ranked(neg, n)
    for i in range(n):
        order += [lst[i][:2] for lst in (pos_list, neg_list) if i < len(lst)]
    by_abs = np.argsort(-np.abs(effects.mean(0)), axis=None, kind="stable")
    order += [tuple(int(v) for v in np.unravel_index(i, pos.shape)) for i in by_abs]
    chosen = np.zeros(pos.shape, dtype=bool)
    for l, h in order:
        if chosen.sum() >= budget:
            break
        chosen[l, h] = True
    return chosen


def search_heads(
    vlm: VLM,
    items: Sequence[SearchItem],
    *,
    strategy: str = "exact",
    scoring: str = "subset",
    ablation: str = "mean",
    top_k: int = 10,
    verify_k: int | None = None,
    batch_size: int = 16,
    batch_rows: int = 64,
    checkpoint: Checkpointer | None = None,
    stream: bool = False,
) -> SearchResult:
    """Score every (layer, head) of the language model on `items`; see the strategies module.
    `stream`: the exact layers (and attribution's offsets) hold one batch at a time (re-encoded
    per layer), same numbers; attribution's first-order pass always holds one batch at a time."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    if not items:
        raise ValueError("head search needs at least one question")
    saved = checkpoint.load() if checkpoint else {}
    t0 = time.perf_counter()

    def layer_store(prefix: str):
        done = {int(k.rsplit(":", 1)[1]): np.array(v) for k, v in saved.items() if k.startswith(prefix + ":")}

        def on_layer(layer: int, values: np.ndarray) -> None:
            if checkpoint:
                checkpoint.save(f"{prefix}:{layer}", values.tolist())

        return done, on_layer

    verified = None
    if strategy == "reference":
        done, on_layer = layer_store("reference")
        eff = reference_effects(vlm, items, ablation, done=done, on_layer=on_layer)
    elif strategy == "exact":
        done, on_layer = layer_store("exact")
        eff = exact_effects(vlm, items, ablation, batch_size=batch_size, batch_rows=batch_rows, done=done, on_layer=on_layer,
                            stream=stream)
    elif strategy == "attribution":
        eff = attribution_effects(vlm, items, ablation, batch_size=batch_size, batch_rows=batch_rows, stream=stream)
    else:
        att = attribution_effects(vlm, items, ablation, batch_size=batch_size, batch_rows=batch_rows, stream=stream)
        verified = verify_candidates(att.effects, att.correct, scoring, verify_k or 3 * top_k)
        # The layers re-scored are only valid for this choice of heads (attribution on a GPU
        # need not be bit-reproducible), so the choice names their checkpoints.
        done, on_layer = layer_store(f"verify.{hashlib.sha256(verified.tobytes()).hexdigest()[:16]}")
        ex = exact_effects(
            vlm, items, ablation, batch_size=batch_size, batch_rows=batch_rows, heads=verified, done=done, on_layer=on_layer,
            stream=stream,
        )
        merged = att.effects.copy()
        merged[:, verified] = ex.effects[:, verified]
        eff = Effects(merged, ex.base_prob, ex.correct, att.exact_layers)
    seconds = time.perf_counter() - t0
    matrices = score(eff.effects, eff.correct, scoring, top_k, allowed=verified)
    return SearchResult(strategy, scoring, [it.qid for it in items], eff.effects, eff.base_prob, eff.correct, matrices, seconds,
                        verified, top_k, list(eff.exact_layers))


__all__ = ["SearchItem", "SearchResult", "search_heads", "STRATEGIES", "Checkpointer", "HeadMatrices"]
