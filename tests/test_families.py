"""Every family's fast paths give the model's own numbers, on padded batches of unequal-length
questions, with weights scaled so that single heads matter (see zoo/families.py).

Per family: the run's self-check passes; baseline / set scoring (plain and under head
scaling) equals `model(**inputs)` on each question alone; `exact` equals `reference` in both
ablation modes, with the largest single-head effect ≥ 0.05 so that the comparison proves
something; image positions come from the registry's image_token_attr.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import WORDS, load_vlm
from vseam_run.data import toyworld
from vseam_run.errors import VseamError
from vseam_run.heads import edit_heads, scale_edits
from vseam_run.scoring import Item, ScoredSet
from vseam_run.search import SearchItem, search_heads
from vseam_run.zoo.families import FAMILIES, IN_MEMORY, family_images, memory_family, write_family

QUESTIONS = 3


@pytest.fixture(scope="module", params=FAMILIES + IN_MEMORY)
def family(request, tmp_path_factory):
    if request.param in IN_MEMORY:
        vlm, fam = memory_family(request.param, WORDS)
    else:
        path, fam = write_family(request.param, tmp_path_factory.mktemp(f"fam-{request.param}"), WORDS)
        vlm = load_vlm(path)
    ex = toyworld.sample_examples(5, QUESTIONS, 32)
    images = family_images(fam, QUESTIONS, seed=2)
    questions = [e.question + " ?" * i for i, e in enumerate(ex)]  # unequal lengths, so batches are padded
    # Gold: the model's own answer for even questions (high probability, so ablations move it), a
    # toy-world answer for odd ones.
    answers = vlm.answer_token_ids([e.answer for e in ex])
    items = []
    for i, (im, q) in enumerate(zip(images, questions)):
        top = int(_single(vlm, im, q).argmax())
        gold = top if i % 2 == 0 or answers[i] is None else answers[i]
        items.append(Item(str(i), im, q, ex[i].answer, gold, "c"))
    return request.param, vlm, items


@torch.no_grad()
def _single(vlm, image, question, edits=None) -> torch.Tensor:
    with edit_heads(vlm, edits or {}):
        return vlm.model(**vlm.encode([image], [question])).logits[0, -1].float().softmax(-1)


def test_self_check_passes_and_batches_are_padded(family):
    name, vlm, items = family
    metrics = vlm.self_check(items)
    assert metrics["check.max_prob_diff"] <= 1e-4
    prep = vlm.prepare(vlm.encode([it.image for it in items], [it.question for it in items]))
    assert (prep.attention_mask == 0).any(), "the check batch must contain padding"
    n_img = vlm.image_positions(prep).sum(1)
    assert vlm.image_token_id is not None and (n_img > 0).all()
    if name in ("llava_next", "qwen2_vl"):
        assert len(set(n_img.tolist())) > 1, "images of different shapes give different token counts"
    if name == "qwen2_vl":  # what makes it hard: 3-D positions that depend on the image grid
        assert vlm.model.model.rope_deltas is not None


def test_set_scoring_equals_model_forward(family):
    """Baseline scoring and scoring under head scaling (modulation) == model(**inputs) per question."""
    _, vlm, items = family
    scored = ScoredSet(vlm, items, batch_size=2)
    factors = torch.ones(vlm.num_layers, vlm.num_heads)
    factors[0, 1], factors[-1, 2] = 0.0, 2.0
    for edits in ({}, scale_edits(factors)):
        rows = scored.run(edits)
        want = [float(_single(vlm, it.image, it.question, edits)[it.gold_id]) for it in items]
        np.testing.assert_allclose([r["gold_prob"] for r in rows], want, atol=1e-5)
    base = ScoredSet.score_once(vlm, items, 2, "baseline")
    np.testing.assert_allclose([r["gold_prob"] for r in base], [r["gold_prob"] for r in scored.run()], atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_exact_equals_reference(family, mode):
    _, vlm, items = family
    search = [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in items]
    ref = search_heads(vlm, search, strategy="reference", ablation=mode, top_k=3)
    ex = search_heads(vlm, search, strategy="exact", ablation=mode, top_k=3, batch_size=2, batch_rows=5)
    assert np.abs(ref.effects).max() >= 0.05, "single-head effects too small for the comparison to prove anything"
    assert np.abs(ex.effects - ref.effects).max() <= 1e-5
    np.testing.assert_array_equal(ex.correct, ref.correct)


def test_attribution_gradients_through_the_replay(family):
    """First order (one forward and one backward pass through the replayed layers) is the
    derivative of the model's own gold probability: zero-ablation estimates match finite
    differences of scaling each head by 1 − ε, measured with model(**inputs)."""
    from vseam_run.search.strategies import first_order_effects

    _, vlm, items = family
    items = items[:2]
    search = [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in items]
    first = first_order_effects(vlm, search, "zero", batch_size=2)
    base = np.array([float(_single(vlm, it.image, it.question)[it.gold_id]) for it in items])
    np.testing.assert_allclose(first.base_prob, base, atol=1e-5)
    eps = 1e-3
    for layer in range(vlm.num_layers):
        for head in range(vlm.num_heads):
            factors = torch.ones(vlm.num_layers, vlm.num_heads)
            factors[layer, head] = 1 - eps
            scaled = np.array([float(_single(vlm, it.image, it.question, scale_edits(factors))[it.gold_id]) for it in items])
            np.testing.assert_allclose(first.effects[:, layer, head], (base - scaled) / eps,
                                       atol=0.02 * np.abs(first.effects).max() + 1e-3)
    assert np.abs(first.effects).max() > 0.05


def test_broken_replay_is_caught_by_the_self_check(tmp_path, monkeypatch):
    """Dropping the prefix-LM mask PaliGemma's wrapper builds (what vseam did before) must stop
    the run with the largest difference; a run that asked for `reference` goes on with
    model(**inputs) for every number and the fast paths refuse."""
    from vseam_run import vlm as vlm_mod

    path, fam = write_family("paligemma", tmp_path, WORDS)
    vlm = load_vlm(path)
    ex = toyworld.sample_examples(5, 3, 32)
    items = [Item(str(i), im, e.question + " ?" * i, e.answer, 0, "c")
             for i, (e, im) in enumerate(zip(ex, family_images(fam, 3)))]
    real_call = vlm_mod.Prepared.call

    def without_mask(self, layer, hidden):
        args, kwargs = real_call(self, layer, hidden)
        return args, {**kwargs, "attention_mask": None}

    monkeypatch.setattr(vlm_mod.Prepared, "call", without_mask)
    with pytest.raises(VseamError, match=r"(?s)differs from the model's own forward pass by [0-9.e-]+.*search.strategy: reference"):
        vlm.self_check(items)
    metrics = vlm.self_check(items, fallback=True)
    assert metrics["check.max_prob_diff"] > 1e-3 and metrics["check.fast_path_off"] == 1.0
    rows = ScoredSet(vlm, items, batch_size=3).run()
    want = [float(_single(vlm, it.image, it.question)[0]) for it in items]
    np.testing.assert_allclose([r["gold_prob"] for r in rows], want, atol=1e-5)
    with pytest.raises(VseamError, match="search.strategy: reference"):
        search_heads(vlm, [SearchItem(it.qid, it.image, it.question, 0) for it in items], strategy="exact")


def test_vseam_models_shows_every_tested_family(capsys):
    """`vseam models` lists, per family, what was tested and how; every family this file tests has a row."""
    from tests.test_cli import call
    from vseam_run.zoo.tested import TESTED

    rows = {t.family for t in TESTED.values()}
    assert set(FAMILIES + IN_MEMORY) <= rows
    rc, out, _ = call(capsys, "models", "--json")
    assert rc == 0 and all("tested" in e for e in __import__("json").loads(out))
    rc, out, _ = call(capsys, "models")
    assert rc == 0 and "families tested" in out and "refused at load" in out
