"""``policy: steer`` — add a shift vector to chosen heads' slices of the ``o_proj`` input, in the
manner of ICT (CVPR 2025) and VTI.

Variant built: the *answer-correctness* direction. For each head, the vector is the mean of its
slice at the last position (where the answer is read) over the search questions the model answers
correctly, minus the mean over those it answers wrongly; at inference ``α ×`` that vector is added
to the head's slice at the last position (under KV-cached generation: at every new token). Why
this one and not the clean-minus-edited direction: it needs only the questions and the model's own
answers, so it exists for every dataset (POPE and COCO-QA runs have no edits), it is fitted on
the search split like the head scores, and it points from wrong toward right answers, which is
what the evaluation measures; the edited-image direction measures sensitivity to the concept
edit, a different quantity.

Heads: ``heads: search`` takes the top-K heads of the search by importance (positive score over
its maximum plus negative score over its maximum: heads that carry correct answers or drive wrong
ones); ``heads: probe`` takes the top-K by a linear probe's accuracy (ICT's choice): per head, a
logistic regression fitted on the search split's slices predicts whether the answer is correct,
and its balanced accuracy is measured on val. K and α are chosen on val (α = 0, always tried, is
the identity).

Control: the same vectors (with the same α) moved to as many random heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, ContextManager

import numpy as np
import torch

from vseam_run import dist
from vseam_run.heads import HeadEdit, _o_proj_pre_hooks, edit_heads
from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.modulation.common import _max_positive, _to_numpy, random_heads, top_heads
from vseam_run.modulation.intervention import Intervention, State, register_kind
from vseam_run.modulation.select import select_grid


@dataclass
class AddAtLast(HeadEdit):
    """Adds ``delta`` ([H·d], zero outside the steered heads) to the last position's o_proj input."""

    delta: torch.Tensor | None = None

    def apply(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        assert self.delta is not None
        return torch.cat([x[:, :-1], x[:, -1:] + self.delta.to(device=x.device, dtype=x.dtype)], dim=1)


@register_kind
class SteerIntervention(Intervention):
    """``vectors[i]`` ([head_dim]) added to head ``heads[i]``'s slice at the last position."""

    kind: ClassVar[str] = "steer"
    control_label: ClassVar[str] = "same vectors on as many random heads"

    def __init__(self, heads: list[tuple[int, int]], vectors: torch.Tensor, num_layers: int, num_heads: int,
                 alpha: float = 1.0) -> None:
        self.heads = [(int(l), int(h)) for l, h in heads]
        self.vectors = vectors.to(torch.float32).reshape(len(self.heads), vectors.shape[-1] if vectors.dim() else 0)
        self.num_layers, self.num_heads, self.alpha = num_layers, num_heads, float(alpha)

    def edits(self) -> dict[int, HeadEdit]:
        d = self.vectors.shape[1]
        deltas: dict[int, torch.Tensor] = {}
        for (layer, head), v in zip(self.heads, self.vectors):
            delta = deltas.setdefault(layer, torch.zeros(self.num_heads * d, dtype=torch.float32))
            delta[head * d:(head + 1) * d] += v
        return {layer: AddAtLast(delta=delta) for layer, delta in deltas.items()}

    def installed(self, vlm) -> ContextManager[None]:
        return edit_heads(vlm, {} if self.is_identity() else self.edits())

    def is_identity(self) -> bool:
        return not self.heads or bool(torch.all(self.vectors == 0))

    def heads_changed(self) -> float:
        return 0.0 if self.is_identity() else float(len(self.heads))

    def control(self, rng: np.random.Generator) -> "SteerIntervention":
        drawn = random_heads(self.num_layers, self.num_heads, len(self.heads), rng, exclude=self.heads)
        return SteerIntervention(drawn, self.vectors, self.num_layers, self.num_heads, self.alpha)

    def state(self) -> State:
        heads = torch.tensor(self.heads, dtype=torch.int64).reshape(-1, 2)
        return State({"heads": heads, "vectors": self.vectors},
                     {"kind": self.kind, "positions": "last", "alpha": self.alpha, "num_layers": self.num_layers,
                      "num_heads": self.num_heads})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "SteerIntervention":
        heads = [tuple(map(int, row)) for row in tensors["heads"].reshape(-1, 2).tolist()]
        return cls(heads, tensors["vectors"], int(meta["num_layers"]), int(meta["num_heads"]), float(meta.get("alpha", 1.0)))

    def describe(self) -> dict[str, Any]:
        return {"heads": [list(h) for h in self.heads], "alpha": self.alpha,
                "vector_norms": [float(v.norm()) for v in self.vectors]}


# ---------------------------------------------------------------------------
# Fitting: last-position slices, directions, probes
# ---------------------------------------------------------------------------


@torch.no_grad()
def last_slices(scored, matcher) -> tuple[torch.Tensor, torch.Tensor]:
    """Every question's o_proj input at the last position, ``[N, L, H, d]`` (float32, CPU), and
    whether the unmodulated model answered it correctly (``[N]`` bool), in question order."""
    vlm = scored.vlm
    store: list[list[torch.Tensor]] = [[] for _ in range(vlm.num_layers)]

    def hook_for(layer: int):
        def hook(_mod, args):
            store[layer].append(args[0][:, -1].detach().float().cpu())
        return hook

    with dist.unsharded(), _o_proj_pre_hooks(vlm, {layer: hook_for(layer) for layer in range(vlm.num_layers)}):
        rows = matcher.rows(scored.run())
    x = torch.stack([torch.cat(per_layer) for per_layer in store], dim=1)  # [N, L, H*d]
    n = x.shape[0]
    correct = torch.tensor([bool(r["correct"]) for r in rows], dtype=torch.bool)
    if len(correct) != n:
        raise RuntimeError(f"steer: captured {n} last positions for {len(correct)} questions")
    return x.reshape(n, vlm.num_layers, vlm.num_heads, -1), correct


def directions(x: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """``[L, H, d]``: mean slice over correctly answered questions minus over wrongly answered ones."""
    if bool(correct.all()) or not bool(correct.any()):
        raise ValueError("steer needs search questions answered both correctly and wrongly at baseline "
                         f"(got {int(correct.sum())} correct of {len(correct)})")
    return x[correct].mean(0) - x[~correct].mean(0)


def importance(positive: Any, negative: Any) -> np.ndarray:
    """Search importance per head: positive / max(positive) + negative / max(negative)."""
    pos, neg = _to_numpy(positive).astype(np.float64), _to_numpy(negative).astype(np.float64)
    return np.nan_to_num(np.clip(pos, 0, None) / _max_positive(pos) + np.clip(neg, 0, None) / _max_positive(neg))


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
                   steps: int = 200, lr: float = 0.05, l2: float = 1e-3, seed: int = 0) -> np.ndarray:
    """``[L, H]`` balanced accuracy on val of a per-head logistic regression fitted on train.

    All heads are fitted at once (one weight vector per head), on features standardised with the
    train split's mean and sd, the loss weighting both classes equally (wrong answers are rare).
    """
    n, L, H, d = train_x.shape
    mu, sd = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    tx = ((train_x - mu) / sd).reshape(n, L * H, d)
    vx = ((val_x - mu) / sd).reshape(val_x.shape[0], L * H, d)
    y = train_y.float()
    pos_w = 0.5 / y.mean().clamp(min=1e-6)
    neg_w = 0.5 / (1 - y.mean()).clamp(min=1e-6)
    weight = torch.where(train_y, pos_w, neg_w)[:, None]  # [n, 1]
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(L * H, d, generator=gen) * 0.01).requires_grad_(True)
    b = torch.zeros(L * H, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = torch.einsum("nkd,kd->nk", tx, w) + b
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y[:, None].expand_as(logits), reduction="none") * weight).mean() + l2 * w.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = (torch.einsum("nkd,kd->nk", vx, w) + b) > 0  # [m, L*H]
        vy = val_y[:, None]
        tpr = (pred & vy).sum(0).float() / vy.sum().clamp(min=1)
        tnr = (~pred & ~vy).sum(0).float() / (~vy).sum().clamp(min=1)
        bal = 0.5 * (tpr + tnr) if bool(vy.any()) and bool((~vy).any()) else (pred == vy).float().mean(0)
    return bal.reshape(L, H).numpy().astype(np.float64)


@register_policy
class Steer(Policy):
    name = "steer"

    def choose(self, ctx: FitContext) -> Chosen:
        pol, sink, vlm = self.options, ctx.sink, ctx.vlm
        L, H = vlm.num_layers, vlm.num_heads

        def fit() -> tuple[torch.Tensor, np.ndarray]:
            x, correct = last_slices(ctx.sets.get("search", "policy: steer"), ctx.matcher)
            dirs = directions(x, correct)
            if pol.heads == "probe":
                vx, vcorrect = last_slices(ctx.sets.get("val", "policy: steer (heads: probe)"), ctx.matcher)
                rank = probe_accuracy(x, correct, vx, vcorrect, seed=ctx.seed)
            else:
                m = ctx.result.matrices
                rank = importance(m.positive, m.negative)
            return dirs, rank

        ks = pol.k_grid if pol.k == "auto" else [pol.k]
        alphas = pol.grid if pol.alpha == "auto" else [float(pol.alpha)]
        if all(float(a) == 0 for a in alphas):  # strength 0 only: the identity, nothing to fit
            sink.record({"modulation.k": float(ks[0]), "modulation.alpha": 0.0})
            return Chosen(SteerIntervention([], torch.zeros(0, vlm.head_dim), L, H, 0.0),
                          {"policy": "steer", "heads": pol.heads, "k": int(ks[0]), "alpha": 0.0})
        dirs, rank = dist.main_decides(fit)
        sink.document("steer_heads", {"ranking": pol.heads, "scores": rank.tolist()})

        def intervention(k: int, alpha: float) -> SteerIntervention:
            heads = [(l, h) for l, h, _ in top_heads(rank, k)] if alpha != 0 else []
            vectors = torch.stack([alpha * dirs[l, h] for l, h in heads]) if heads else torch.zeros(0, dirs.shape[-1])
            return SteerIntervention(heads, vectors, L, H, alpha)

        candidates = [{"k": int(k), "alpha": float(a)} for k in dict.fromkeys(ks) for a in dict.fromkeys(alphas)]
        if len(candidates) > 1:
            acc = ctx.val_accuracy("modulation.k / alpha: auto")
            choice = select_grid(candidates, lambda p: acc(intervention(int(p["k"]), p["alpha"])),
                                 lambda p: (abs(p["alpha"]), p["k"]))
            best = choice.best
            sink.document("steer_selection", choice.rows())
            sink.log("  K, α on val: " + ", ".join(f"{int(p.params['k'])},{p.params['alpha']:g}→{p.val_accuracy:.3f}"
                                                   for p in choice.table)
                     + f"; chose K = {int(best['k'])}, α = {best['alpha']:g}")
        else:
            best = candidates[0]
        iv = intervention(int(best["k"]), best["alpha"])
        sink.record({"modulation.k": float(best["k"]), "modulation.alpha": best["alpha"]})
        return Chosen(iv, {"policy": "steer", "heads": pol.heads, "k": int(best["k"]), "alpha": best["alpha"]})
