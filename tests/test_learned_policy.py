"""The learned policy: gradients reach the scales through the o_proj hooks and fitting lowers
the training cross-entropy; the stage's random-head control uses the policy's own values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vseam_run.data import toyworld
from vseam_run.heads import HeadEdit, edit_heads
from vseam_run.learned import PositionHeadEdit, edits_for, fit_scales
from vseam_run.scoring import Item, ScoredSet
from vseam_run.stages import modulate as stage


def _scored(vlm, n: int, seed: int) -> ScoredSet:
    ex = toyworld.sample_examples(seed, n, 32)
    gold = vlm.answer_token_ids([e.answer for e in ex])
    items = [Item(f"q{seed}_{i}", e.image, e.question, e.answer, g, "c") for i, (e, g) in enumerate(zip(ex, gold)) if g is not None]
    return ScoredSet(vlm, items, 8, "t")


def _mean_ce(vlm, scored: ScoredSet, scales: torch.Tensor) -> float:
    rows = scored.run(edits_for(scales))
    return float(np.mean([-math.log(r["gold_prob"]) for r in rows]))


def test_position_edit_equals_plain_scaling_and_gradient_is_right(tiny_vlm, toy_examples):
    vlm = tiny_vlm
    prep = vlm.prepare(vlm.encode([e.image for e in toy_examples], [e.question for e in toy_examples]))
    f = torch.linspace(0.2, 1.8, vlm.num_heads)
    with edit_heads(vlm, {1: HeadEdit(factors=f)}):
        plain = vlm.last_logits(prep)
    with edit_heads(vlm, {1: PositionHeadEdit(rest=f, last=f.clone())}):
        split = vlm.last_logits(prep)
    assert torch.allclose(plain, split, atol=1e-6)
    # Scaling only the last position is a different intervention (the check is not vacuous).
    with edit_heads(vlm, {1: PositionHeadEdit(rest=torch.ones_like(f), last=f)}):
        assert not torch.allclose(plain, vlm.last_logits(prep), atol=1e-4)
    # Autograd through the hooks against a central finite difference on one scale.
    gold = torch.tensor(vlm.answer_token_ids([e.answer for e in toy_examples]))
    theta = torch.full((vlm.num_layers, vlm.num_heads), 1.3, dtype=torch.float64)

    def loss(t: torch.Tensor) -> torch.Tensor:
        with edit_heads(vlm, edits_for(t.float(), every_layer=True)):
            return F.cross_entropy(vlm.last_logits(prep).double(), gold)

    t = theta.clone().requires_grad_(True)
    loss(t).backward()
    h = 1e-2
    plus, minus = theta.clone(), theta.clone()
    plus[0, 1] += h
    minus[0, 1] -= h
    with torch.no_grad():
        fd = (loss(plus) - loss(minus)) / (2 * h)
    assert abs(float(t.grad[0, 1]) - float(fd)) < 1e-3 * max(1.0, abs(float(fd)))
    assert float(t.grad.abs().max()) > 1e-4


def test_fitting_lowers_training_cross_entropy(tiny_llava_entry):
    from conftest import load_vlm

    vlm = load_vlm(tiny_llava_entry)
    train = _scored(vlm, 16, 3)
    flags = [p.requires_grad for p in vlm.model.parameters()]
    before = _mean_ce(vlm, train, torch.ones(vlm.num_layers, vlm.num_heads))
    # val = the training set, so the kept epoch is the one with the lowest training CE.
    fit = fit_scales(vlm, train, train, epochs=4, patience=4, lr=0.1, l2=0.0, kl=0.0,
                     accuracy_fn=lambda rows: 0.0)
    after = _mean_ce(vlm, train, fit.scales)
    assert fit.best_epoch >= 1 and after < before - 1e-3, (before, after)
    assert fit.scales.shape == (vlm.num_layers, vlm.num_heads)
    assert float(fit.scales.min()) >= 0.0 and float(fit.scales.max()) <= 2.0
    assert [h.epoch for h in fit.history] == list(range(len(fit.history)))
    # Weights are left as they were (frozen for the fit, their flags restored after).
    assert [p.requires_grad for p in vlm.model.parameters()] == flags
    # Per position group: [L, 2, H] scales.
    fit2 = fit_scales(vlm, train, train, positions="last_vs_rest", epochs=1, patience=1, lr=0.1, kl=0.5,
                      accuracy_fn=lambda rows: 0.0)
    assert fit2.scales.shape == (vlm.num_layers, 2, vlm.num_heads)


class _Recorder:
    """A ScoredSet stand-in that records the scale values it is run under."""

    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def run(self, edits=None):
        if hasattr(edits, "edits"):  # an intervention (vseam_run.modulation): its head edits
            edits = edits.edits()
        values = []
        for e in (edits or {}).values():
            values += e.factors.tolist()
        self.seen.append(values)
        return [{"qid": "a", "gold": "yes", "pred": "yes", "correct": True, "gold_prob": 0.9}]


def test_control_runs_the_policy_values_on_random_heads(tmp_path: Path):
    scales = torch.ones(3, 4)
    scales[0, 1], scales[2, 3] = 1.5, 0.5
    rec = _Recorder()
    logged: dict = {}
    sink = stage.Sink(logged.update, lambda k, v: logged.__setitem__(k, v), lambda *a: None, lambda *a: None,
                      lambda *a: None, tmp_path)
    settings = stage.Settings(policy=None, control_draws=4, seed=0)
    res = stage.control(rec, scales, rec.run(), 0.0, "eval.test", settings, stage.Matcher(), sink)
    assert len(res.gains) == 4 and logged["eval.test.control.draws"] == 4
    for values in rec.seen[1:]:
        # Every draw changes the same two heads by the same two values (layers all-1 are skipped).
        assert sorted(v for v in values if v != 1.0) == [0.5, 1.5]
    # Nothing to control when the policy changes nothing.
    assert stage.control(rec, torch.ones(3, 4), rec.run(), 0.0, "x", settings, stage.Matcher(), sink) is None
