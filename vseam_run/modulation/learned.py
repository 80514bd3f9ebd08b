"""``policy: learned`` — per-head scales fitted by gradient descent.

The scales multiply the heads' slices of the ``o_proj`` input, exactly as every other
policy's do (``heads.py``), so the gradient reaches them through the same hooks. They are
fitted on the *search* split only: loss = cross-entropy of the gold token at the last
position + ``l2``·mean (s − 1)² + ``kl``·KL(unmodulated ‖ modulated) + ``l1``·mean |s − 1|,
with s projected into the clip range after every step. After each epoch the scales are
scored on the *val* split; the best epoch by val accuracy (ties: lower val cross-entropy)
is kept, and training stops after ``patience`` epochs without improvement. The test split
is never touched here.

With ``positions: last_vs_rest`` each head has two scales, one for the last position (the
one the answer is read from) and one for all earlier positions (image and question).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F

from vseam_run import dist
from vseam_run.heads import HeadEdit, edit_heads, scale
from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.scoring import ScoredSet

Positions = Literal["all", "last_vs_rest"]


@dataclass
class PositionHeadEdit(HeadEdit):
    """Scales a layer's heads by one factor at the last position and another at all others."""

    last: torch.Tensor | None = None  # [H]
    rest: torch.Tensor | None = None  # [H]

    def apply(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        assert self.last is not None and self.rest is not None
        return torch.cat([scale(x[:, :-1], num_heads, self.rest), scale(x[:, -1:], num_heads, self.last)], dim=1)


def edits_for(scales: torch.Tensor, *, every_layer: bool = False) -> dict[int, HeadEdit]:
    """Head edits for a ``[L, H]`` (one scale per head) or ``[L, 2, H]`` (rest, last) scale tensor.

    Layers whose scales are all exactly 1 get no edit unless ``every_layer`` (training
    needs every layer hooked, or scales starting at 1 would never receive a gradient).
    The tensor's autograd graph is kept, so the same edits serve training and evaluation.
    """
    keep = [l for l in range(scales.shape[0]) if every_layer or not bool(torch.all(scales[l] == 1))]
    if scales.dim() == 2:
        return {l: HeadEdit(factors=scales[l]) for l in keep}
    if scales.dim() == 3 and scales.shape[1] == 2:
        return {l: PositionHeadEdit(rest=scales[l, 0], last=scales[l, 1]) for l in keep}
    raise ValueError(f"scales must be [layers, heads] or [layers, 2, heads], got shape {tuple(scales.shape)}")


@dataclass
class EpochLog:
    """One epoch: mean training loss and cross-entropy on the search split, accuracy and CE on val."""

    epoch: int
    train_loss: float
    train_ce: float
    val_accuracy: float
    val_ce: float


@dataclass
class LearnedScales:
    """The kept scales, the epoch they come from and the whole training curve."""

    scales: torch.Tensor
    best_epoch: int
    history: list[EpochLog] = field(default_factory=list)


@contextlib.contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Model weights out of autograd while the scales train (no gradient buffers for 7B weights)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _batch_logits(vlm, batch, edits: dict[int, HeadEdit]) -> torch.Tensor:
    prep = batch[0]
    with edit_heads(vlm, edits):
        return vlm.last_logits(prep)


class _BaseLogProbs:
    """Log-probabilities of the unmodulated model per training batch, held or recomputed on use."""

    def __init__(self, vlm, batches, *, keep: bool) -> None:
        self.vlm, self.batches = vlm, batches
        self._held = [self._compute(b) for b in batches] if keep else None

    @torch.no_grad()
    def _compute(self, batch) -> torch.Tensor:
        return F.log_softmax(_batch_logits(self.vlm, batch, {}).float(), -1)

    def __call__(self, i: int, batch) -> torch.Tensor:
        """Batch `i`'s (`batch`: the same batch, already encoded by the caller)."""
        return self._held[i] if self._held is not None else self._compute(batch)


@torch.no_grad()
def _eval(scored: ScoredSet, scales: torch.Tensor, accuracy_fn: Callable[[list[dict]], float]) -> tuple[float, float]:
    """(accuracy under the run's answer rule, mean gold cross-entropy) of ``scored`` under ``scales``."""
    rows = scored.run(edits_for(scales))
    ce = sum(-math.log(max(r["gold_prob"], 1e-45)) for r in rows) / max(len(rows), 1)
    return accuracy_fn(rows), ce


def fit_scales(
    vlm,
    search: ScoredSet,
    val: ScoredSet,
    *,
    positions: Positions = "all",
    epochs: int = 30,
    patience: int = 5,
    lr: float = 0.05,
    l2: float = 1.0,
    kl: float = 1.0,
    l1: float = 0.0,
    clip: tuple[float, float] = (0.0, 2.0),
    seed: int = 0,
    accuracy_fn: Callable[[list[dict]], float],
    log: Callable[[str], None] | None = None,
) -> LearnedScales:
    """Fit per-head scales on ``search``, early-stopped on ``val`` (see the module docstring).

    Starts from all ones (the unmodulated model), so epoch 0 — no change — competes too:
    if no epoch beats it on val, the identity is returned.
    """
    L, H = vlm.num_layers, vlm.num_heads
    shape = (L, H) if positions == "all" else (L, 2, H)
    theta = torch.ones(shape, dtype=torch.float32, device=vlm.device, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    batches = search.every_batch()  # all of them: an SGD path cannot be split across ranks
    # The unmodulated distribution the KL term keeps the model near: kept per batch, or, with a
    # streamed set, recomputed when its batch comes up (the same pass on the same inputs).
    base_logp = _BaseLogProbs(vlm, batches, keep=not search.stream)
    acc0, ce0 = _eval(val, theta.detach(), accuracy_fn)
    history = [EpochLog(0, math.nan, math.nan, acc0, ce0)]
    best, best_key, best_epoch, since = theta.detach().clone(), (acc0, -ce0), 0, 0
    with _frozen(vlm.model), torch.enable_grad():
        for epoch in range(1, epochs + 1):
            tot_loss, tot_ce, n = 0.0, 0.0, 0
            for i in torch.randperm(len(batches), generator=gen).tolist():
                batch = batches[i]
                logits = _batch_logits(vlm, batch, edits_for(theta, every_layer=True)).float()
                ce = F.cross_entropy(logits, batch[1])
                logp = F.log_softmax(logits, -1)
                loss = ce + l2 * (theta - 1).pow(2).mean() + l1 * (theta - 1).abs().mean()
                if kl > 0:
                    loss = loss + kl * F.kl_div(logp, base_logp(i, batch), log_target=True, reduction="batchmean")
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    theta.clamp_(*clip)
                m = len(batch[2])
                tot_loss, tot_ce, n = tot_loss + loss.item() * m, tot_ce + ce.item() * m, n + m
            acc, vce = _eval(val, theta.detach(), accuracy_fn)
            history.append(EpochLog(epoch, tot_loss / n, tot_ce / n, acc, vce))
            if log:
                log(f"  learned epoch {epoch}: train CE {tot_ce / n:.4f}, val acc {acc:.3f}, val CE {vce:.4f}")
            if (acc, -vce) > best_key:
                best, best_key, best_epoch, since = theta.detach().clone(), (acc, -vce), epoch, 0
            else:
                since += 1
                if since >= patience:
                    break
    return LearnedScales(best.cpu(), best_epoch, history)


@register_policy
class Learned(Policy):
    name = "learned"

    def choose(self, ctx: FitContext) -> Chosen:
        from vseam_run.modulation.intervention import ScaleIntervention

        pol, sink = self.options, ctx.sink
        search = ctx.sets.get("search", "policy: learned")
        val = ctx.sets.get("val", "policy: learned (early stopping)")

        def fit_alone() -> LearnedScales:
            # One SGD path cannot be split across ranks: under torchrun rank 0 fits (and scores val)
            # alone and the others receive its scales, instead of every rank repeating the same work.
            with dist.unsharded():
                return fit_scales(
                    ctx.vlm, search, val, positions=pol.positions, epochs=pol.epochs, patience=pol.patience, lr=pol.lr,
                    l2=pol.l2, kl=pol.kl, l1=pol.l1, clip=tuple(pol.clip), seed=ctx.seed, accuracy_fn=ctx.matcher.accuracy,
                    log=sink.log,
                )

        fit = dist.main_decides(fit_alone)
        sink.document("learned_history", [vars(h) for h in fit.history])
        sink.record({"modulation.learned.best_epoch": float(fit.best_epoch),
                     "modulation.learned.epochs_run": float(len(fit.history) - 1)})
        sink.log(f"  learned scales: kept epoch {fit.best_epoch} of {len(fit.history) - 1} "
                 f"(val acc {fit.history[fit.best_epoch].val_accuracy:.3f}); scales in "
                 f"[{float(fit.scales.min()):.3f}, {float(fit.scales.max()):.3f}]")
        return Chosen(ScaleIntervention(fit.scales), {"policy": "learned", "positions": pol.positions,
                                                       "best_epoch": fit.best_epoch, "l2": pol.l2, "kl": pol.kl,
                                                       "l1": pol.l1, "lr": pol.lr})
