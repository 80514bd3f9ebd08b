"""Attribution on large effects (issue 20 item 5): a head that matters a lot is ranked first and
scored near its exact effect, where first order on the gold probability underrates it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vseam_run.bench_attribution import harmed, toy_items
from vseam_run.search import SearchItem, search_heads
from vseam_run.search.scoring import head_matrices
from vseam_run.search.strategies import attribution_effects, exact_effects, first_order_effects, gold_logit_difference

from tests.conftest import load_vlm

PLANTED = (2, 1)  # the last layer of the tiny LLaVA: first order through the layers is near exact there


def test_gold_logit_difference_is_the_log_odds_and_stays_finite_where_p_rounds_to_one():
    logits = torch.tensor([[0.0, 1.0, 2.0], [40.0, 0.0, 0.0]])
    gold = torch.tensor([2, 0])
    ell = gold_logit_difference(logits, gold)
    p = logits.double().softmax(-1)[[0, 1], [2, 0]]
    assert abs(float(ell[0]) - float(torch.log(p[0] / (1 - p[0])))) < 1e-5
    # p is 1.0 in float32 here; its log odds (40 − log 2) are still there.
    assert float(logits.softmax(-1)[1, 0]) == 1.0 and abs(float(ell[1]) - (40 - np.log(2))) < 1e-4


@pytest.fixture
def planted(tiny_llava_entry):
    """A tiny random LLaVA with one last-layer head scaled ×40, and questions whose gold answer is
    the planted model's own: the head decides every answer (p ≈ 1), so ablating it costs most of
    the probability, an effect far above noise."""
    from vseam_run.data import toyworld

    vlm = load_vlm(tiny_llava_entry)
    ex = toyworld.sample_examples(5, 6, 32)
    items = [SearchItem(str(i), e.image, e.question, 0) for i, e in enumerate(ex)]
    with harmed(vlm, {PLANTED: 40.0}):
        for it in items:
            with torch.no_grad():
                it.gold_id = int(vlm.last_logits(vlm.prepare(vlm.encode([it.image], [it.question]))).argmax(-1))
        yield vlm, items


def test_a_large_effect_head_is_ranked_first_and_not_underrated(planted):
    vlm, items = planted
    ex = exact_effects(vlm, items, "mean", batch_size=3)
    assert ex.correct.all() and ex.base_prob.min() > 0.9
    pos_exact = head_matrices(ex.effects, ex.correct)[0]
    top = np.unravel_index(pos_exact.argmax(), pos_exact.shape)
    assert top == PLANTED and pos_exact[PLANTED] > 0.5
    prob = head_matrices(first_order_effects(vlm, items, "mean", batch_size=3, scale="prob").effects, ex.correct)[0]
    logit = head_matrices(first_order_effects(vlm, items, "mean", batch_size=3, scale="logit").effects, ex.correct)[0]
    # The saturation this guards against: ∂p = p(1 − p)·∂ℓ is near 0 at p ≈ 1, so first order on p
    # scores the head that decides every answer at a fraction of its effect.
    assert prob[PLANTED] < 0.5 * pos_exact[PLANTED]
    # On the log odds, mapped back to probability: ranked first, scored near exact.
    assert np.unravel_index(logit.argmax(), logit.shape) == PLANTED
    assert 0.8 <= logit[PLANTED] / pos_exact[PLANTED] <= 1.2
    # The default attribution (logit scale, offsets, its own check) ranks it first too.
    att = search_heads(vlm, items, strategy="attribution", scoring="subset", ablation="mean", top_k=3, batch_size=3)
    assert att.matrices.top_positive[0][:2] == PLANTED
    assert 0.8 <= att.matrices.top_positive[0][2] / pos_exact[PLANTED] <= 1.2


def test_small_effects_agree_at_both_scales(tiny_llava_entry):
    """For small effects the log-odds estimate is the probability estimate (same first order)."""
    from vseam_run.data import toyworld

    vlm = load_vlm(tiny_llava_entry)
    ex = toyworld.sample_examples(7, 4, 32)
    gold = vlm.answer_token_ids([e.answer for e in ex])
    items = [SearchItem(str(i), e.image, e.question, g) for i, (e, g) in enumerate(zip(ex, gold))]
    a = first_order_effects(vlm, items, "mean", batch_size=2, scale="prob").effects
    b = first_order_effects(vlm, items, "mean", batch_size=2, scale="logit").effects
    assert np.abs(a).max() < 0.05  # random weights: small effects, or this is vacuous the other way
    np.testing.assert_allclose(b, a, atol=0.1 * np.abs(a).max())


def test_attribution_searches_exactly_the_layer_where_first_order_fails():
    """On toy-llava the layer-0 lookup head L0.H0 carries the answers (exact: ~0.4); first order,
    on either scale, scores it near 0 (the later layers depend on it far from linearly). The
    offset samples test every head of every layer, catch the miss and search layer 0 exactly."""
    from vseam_run.registry import get_entry
    from vseam_run.vlm import VLM

    vlm = VLM.load(get_entry("toy-llava"), torch.device("cpu"), torch.float32)
    items = toy_items(vlm, "relation", 16, 0)
    only = np.zeros((vlm.num_layers, vlm.num_heads), dtype=bool)
    only[0, 0] = True
    ex = exact_effects(vlm, items, "mean", batch_size=8, heads=only)
    pos_exact = head_matrices(ex.effects, ex.correct)[0][0, 0]
    assert pos_exact > 0.2
    first = head_matrices(first_order_effects(vlm, items, "mean", batch_size=8, scale="logit").effects, ex.correct)[0][0, 0]
    assert first < 0.3 * pos_exact  # what first order alone gives
    att = search_heads(vlm, items, strategy="attribution", scoring="subset", ablation="mean", top_k=5, batch_size=8)
    assert 0 in att.exact_layers
    assert att.matrices.top_positive[0][:2] == (0, 0)
    assert abs(att.matrices.positive[0, 0] - pos_exact) < 1e-5
    assert att.to_state()["exact_layers"] == att.exact_layers
