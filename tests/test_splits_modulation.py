"""Splits by image, and modulation through the head primitive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vseam_run.data.base import Question
from vseam_run.heads import HeadEdit, edit_heads, scale_edits
from vseam_run.modulate import linear_scales
from vseam_run.splits import split_by_image


def _questions(n_images: int, per_image: int) -> list[Question]:
    return [
        Question(f"q{i}_{j}", f"img{i}", Path(f"/x/img{i}.png"), "Is there a circle?", "yes", "object", "round")
        for i in range(n_images)
        for j in range(per_image)
    ]


def test_split_by_image_no_shared_image_and_deterministic():
    qs = _questions(50, 3)
    fr = {"search": 0.6, "val": 0.2, "test": 0.2}
    a = split_by_image(qs, fr, seed=7)
    b = split_by_image(qs, fr, seed=7)
    c = split_by_image(qs, fr, seed=8)
    images = {s: {q.image_id for q in v} for s, v in a.items()}
    assert not (images["search"] & images["val"]) and not (images["search"] & images["test"]) and not (images["val"] & images["test"])
    assert [len(images[s]) for s in ("search", "val", "test")] == [30, 10, 10]
    assert sum(len(v) for v in a.values()) == len(qs)
    assert {s: [q.qid for q in v] for s, v in a.items()} == {s: [q.qid for q in v] for s, v in b.items()}
    assert {s: [q.qid for q in v] for s, v in a.items()} != {s: [q.qid for q in v] for s, v in c.items()}


def test_small_split_keeps_every_requested_split():
    a = split_by_image(_questions(4, 1), {"search": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert all(len(v) >= 1 for v in a.values())


def test_lambda_zero_leaves_outputs_unchanged(tiny_vlm, toy_examples):
    vlm = tiny_vlm
    prep = vlm.prepare(vlm.encode([e.image for e in toy_examples], [e.question for e in toy_examples]))
    base = vlm.last_logits(prep)
    score = np.random.default_rng(0).normal(size=(vlm.num_layers, vlm.num_heads))
    ones = torch.as_tensor(linear_scales(score, 0.0, 0.0, 2.0), dtype=torch.float32)
    assert torch.equal(ones, torch.ones_like(ones))
    # Force the hooks on anyway: scaling by exactly 1 must not change a bit.
    with edit_heads(vlm, {l: HeadEdit(factors=ones[l]) for l in range(vlm.num_layers)}):
        same = vlm.last_logits(prep)
    assert torch.equal(base, same)
    assert scale_edits(ones) == {}
    # A non-zero λ does change the outputs (the check above is not vacuous).
    scales = torch.as_tensor(linear_scales(score, 1.0, 0.0, 2.0), dtype=torch.float32)
    with edit_heads(vlm, scale_edits(scales)):
        moved = vlm.last_logits(prep)
    assert not torch.allclose(base, moved)


def test_scaling_a_head_by_zero_equals_zero_ablation(tiny_vlm, toy_examples):
    vlm = tiny_vlm
    prep = vlm.prepare(vlm.encode([e.image for e in toy_examples], [e.question for e in toy_examples]))
    factors = torch.ones(vlm.num_heads)
    factors[1] = 0
    mask = torch.zeros(1, vlm.num_heads, dtype=torch.bool)
    mask[0, 1] = True
    with edit_heads(vlm, {0: HeadEdit(factors=factors)}):
        a = vlm.last_logits(prep)
    with edit_heads(vlm, {0: HeadEdit(ablate_mask=mask, mode="zero")}):
        b = vlm.last_logits(prep)
    assert torch.allclose(a, b, atol=1e-6)
