"""``policy: linear`` — the *released script's* policy, not the paper's figure:
``clip(1 + λ·score, lo, hi)`` on every head with its signed score (or positive − negative).
The script fixed λ = 1 and evaluated in-sample, on 200 of the questions it had scored heads on;
here λ may be chosen on val (``lam: auto``)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from vseam_run import fmt, report
from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.modulation.common import Array, _as_float, _check_2d, _is_torch, _ones_like
from vseam_run.modulation.intervention import ScaleIntervention
from vseam_run.modulation.select import select_lambda

ScoreSource = Literal["signed", "pos_minus_neg"]


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


@register_policy
class Linear(Policy):
    name = "linear"

    def choose(self, ctx: FitContext) -> Chosen:
        pol, m, sink = self.options, ctx.result.matrices, ctx.sink
        score = head_score(m.positive, m.negative, m.signed, pol.score)

        def scales_for(lam: float) -> ScaleIntervention:
            return ScaleIntervention.of(linear_scales(score, lam, pol.clip[0], pol.clip[1], pol.eps))

        if pol.lam == "auto":
            acc = ctx.val_accuracy("modulation.lam: auto")
            choice = select_lambda(pol.grid, lambda l: acc(scales_for(l)))
            lam = choice.best
            sink.document("lambda_selection", [{"lam": p.lam, "val_accuracy": p.val_accuracy} for p in choice.table])
            val_n = len(ctx.sets.get("val", "modulation.lam: auto").items)
            sink.artifact("lambda_curve", report.lambda_curve(choice, sink.art_dir / "lambda_curve.png", n=val_n,
                                                              title=f"validation accuracy vs λ — {sink.label}"))
            sink.log("  λ on val: " + ", ".join(f"{p.lam:g}→{fmt.num(p.val_accuracy)}" for p in choice.table) + f"; chose {lam:g}")
        else:
            lam = float(pol.lam)
        sink.record({"modulation.lambda": lam})
        return Chosen(scales_for(lam), {"policy": "linear", "lambda": lam, "score": pol.score, "clip": list(pol.clip)})
