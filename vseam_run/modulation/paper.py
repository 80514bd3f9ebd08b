"""``policy: paper`` — the paper's framework figure: the top-K positive heads are enhanced by
``1 + λ·pos/max(pos)`` and the top-K negative heads suppressed by ``1 − λ·neg/max(neg)``,
clipped; K and λ are chosen on the val split."""

from __future__ import annotations

import math

import numpy as np

from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.modulation.common import Array, _check_2d, _is_torch, _max_positive, _to_numpy, top_heads
from vseam_run.modulation.intervention import ScaleIntervention
from vseam_run.modulation.select import select_grid


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


@register_policy
class Paper(Policy):
    name = "paper"

    def choose(self, ctx: FitContext) -> Chosen:
        pol, m, sink = self.options, ctx.result.matrices, ctx.sink

        def scales_for(p: dict[str, float]) -> ScaleIntervention:
            return ScaleIntervention.of(paper_scales(m.positive, m.negative, int(p["k"]), p["lam"], pol.clip[0], pol.clip[1]))

        ks = pol.k_grid if pol.k == "auto" else [pol.k]
        lams = pol.grid if pol.lam == "auto" else [float(pol.lam)]
        candidates = [{"k": int(k), "lam": float(l)} for k in dict.fromkeys(ks) for l in dict.fromkeys(lams)]
        if len(candidates) > 1:
            acc = ctx.val_accuracy("modulation.k / lam: auto")
            choice = select_grid(candidates, lambda p: acc(scales_for(p)), lambda p: (p["lam"], p["k"]))
            best = choice.best
            sink.document("paper_selection", choice.rows())
            sink.log("  K, λ on val: " + ", ".join(f"{int(p.params['k'])},{p.params['lam']:g}→{p.val_accuracy:.3f}" for p in choice.table)
                     + f"; chose K = {int(best['k'])}, λ = {best['lam']:g}")
        else:
            best = candidates[0]
        sink.record({"modulation.k": float(best["k"]), "modulation.lambda": best["lam"]})
        return Chosen(scales_for(best), {"policy": "paper", "k": int(best["k"]), "lambda": best["lam"], "clip": list(pol.clip)})
