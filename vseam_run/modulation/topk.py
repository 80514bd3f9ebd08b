"""``policy: topk`` — fixed: the k strongest positive heads get ``alpha``, the k strongest negative
heads ``beta``, all others 1 (nothing is chosen on val)."""

from __future__ import annotations

import numpy as np

from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.modulation.common import Array, _check_2d, _is_torch, _max_positive, _to_numpy, top_heads
from vseam_run.modulation.intervention import ScaleIntervention


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


@register_policy
class TopK(Policy):
    name = "topk"

    def choose(self, ctx: FitContext) -> Chosen:
        pol, m = self.options, ctx.result.matrices
        scales = ScaleIntervention.of(topk_scales(m.positive, m.negative, pol.k, pol.alpha, pol.beta))
        return Chosen(scales, {"policy": "topk", "k": pol.k, "alpha": pol.alpha, "beta": pol.beta})
