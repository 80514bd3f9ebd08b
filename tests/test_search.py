"""Head search: the fast strategies against the reference, on tiny LLaVA and InstructBLIP."""

from __future__ import annotations

import numpy as np
import pytest

from vseam_run.search import STRATEGIES, SearchItem, search_heads, verify_candidates
from vseam_run.search.scoring import head_matrices
from vseam_run.search.strategies import offset_picks


@pytest.fixture
def items(tiny_vlm):
    from vseam_run.data import toyworld

    ex = toyworld.sample_examples(11, 5, 32)
    gold = tiny_vlm.answer_token_ids([e.answer for e in ex])
    return [SearchItem(str(i), e.image, e.question, g) for i, (e, g) in enumerate(zip(ex, gold))]


@pytest.mark.parametrize("strategy", ["exact", "attribution+verify"])
def test_streamed_exact_search_gives_the_held_numbers_bit_for_bit(tiny_vlm, items, strategy):
    """search.stream re-encodes each batch per layer instead of keeping them: same numbers exactly,
    and the layers are checkpointed (and resumed) the same way."""
    kw = dict(strategy=strategy, scoring="signed", top_k=3, batch_size=3, batch_rows=5, verify_k=4)
    held = search_heads(tiny_vlm, items, **kw)
    saved: dict = {}

    class Store:
        def load(self):
            return dict(list(saved.items())[:1])  # as if interrupted after the first stored layer

        def save(self, key, payload):
            saved[key] = payload

    streamed = search_heads(tiny_vlm, items, stream=True, **kw)
    search_heads(tiny_vlm, items, stream=True, checkpoint=Store(), **kw)  # stores every layer
    resumed = search_heads(tiny_vlm, items, stream=True, checkpoint=Store(), **kw)  # layer 0 stored, the rest computed
    assert np.abs(held.effects).max() > 1e-4
    for other in (streamed, resumed):
        np.testing.assert_array_equal(other.effects, held.effects)
        np.testing.assert_array_equal(other.base_prob, held.base_prob)
        np.testing.assert_array_equal(other.correct, held.correct)
    assert len(saved) >= 2


@pytest.mark.parametrize("mode", ["mean", "zero"])
@pytest.mark.parametrize("scoring", ["subset", "signed"])
def test_exact_equals_reference(tiny_vlm, items, mode, scoring):
    ref = search_heads(tiny_vlm, items, strategy="reference", scoring=scoring, ablation=mode, top_k=3)
    # Odd batch sizes and row chunks so padding and chunk edges are exercised.
    ex = search_heads(tiny_vlm, items, strategy="exact", scoring=scoring, ablation=mode, top_k=3, batch_size=2, batch_rows=3)
    assert np.abs(ex.effects - ref.effects).max() <= 1e-5
    assert np.abs(ref.effects).max() > 1e-4, "ablations should change something, or the comparison is vacuous"
    np.testing.assert_array_equal(ex.correct, ref.correct)
    for name in ("positive", "negative", "signed"):
        assert np.abs(getattr(ex.matrices, name) - getattr(ref.matrices, name)).max() <= 1e-5
    assert [h[:2] for h in ex.matrices.top_positive] == [h[:2] for h in ref.matrices.top_positive]


def test_attribution_tracks_exact_and_verify_reports_exact_scores(tiny_vlm, items):
    ex = search_heads(tiny_vlm, items, strategy="exact", scoring="signed", ablation="mean")
    att = search_heads(tiny_vlm, items, strategy="attribution", scoring="signed", ablation="mean")
    corr = np.corrcoef(att.matrices.signed.ravel(), ex.matrices.signed.ravel())[0, 1]
    assert corr > 0.8
    ver = search_heads(tiny_vlm, items, strategy="attribution+verify", scoring="signed", ablation="mean", top_k=2, verify_k=5)
    assert ver.verified.sum() == 5
    np.testing.assert_allclose(ver.effects[:, ver.verified], ex.effects[:, ver.verified], atol=1e-6)
    for l, h, _ in ver.matrices.top_positive + ver.matrices.top_negative:
        assert ver.verified[l, h], "only exactly re-scored heads may be reported"


@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_attribution_offsets(tiny_vlm, items, mode):
    """First order + one offset per layer and group (answered right / wrong), measured exactly:
    the sampled heads carry their exact effect, every other head its first-order estimate
    shifted by the mean exact − first-order difference of its layer's and group's samples."""
    from vseam_run.search.strategies import attribution_effects, exact_effects, first_order_effects

    first = first_order_effects(tiny_vlm, items, mode, batch_size=2)
    ex = exact_effects(tiny_vlm, items, mode, batch_size=2)
    att = attribution_effects(tiny_vlm, items, mode, batch_size=2, batch_rows=3, offset_samples=2, scale="prob",
                              exact_tolerance=None)
    Q, L, H = ex.effects.shape
    assert np.abs(ex.effects - first.effects).max() > 1e-5, "first order should not be exact here, or this is vacuous"
    np.testing.assert_array_equal(att.correct, ex.correct)
    picks = offset_picks(ex.correct, L, H, 2)
    for group in (ex.correct, ~ex.correct):
        qs = np.flatnonzero(group)
        if not len(qs):
            continue
        for l in range(L):
            sampled = [(q, picks[q, l]) for q in qs if picks[q, l] >= 0]
            assert len(sampled) == min(2, len(qs))
            shift = np.mean([ex.effects[q, l, h] - first.effects[q, l, h] for q, h in sampled])
            for q in qs:
                for h in range(H):
                    want = ex.effects[q, l, h] if (q, h) in sampled else first.effects[q, l, h] + shift
                    assert abs(att.effects[q, l, h] - want) <= 1e-5
    none = attribution_effects(tiny_vlm, items, mode, batch_size=2, offset_samples=None, scale="prob")
    np.testing.assert_array_equal(none.effects, first.effects)


def test_offset_picks_spread_over_groups_and_heads():
    correct = np.array([True] * 6 + [False] * 3)
    picks = offset_picks(correct, layers=5, heads=4, samples=2)
    for l in range(5):
        assert (picks[:6, l] >= 0).sum() == 2 and (picks[6:, l] >= 0).sum() == 2
    assert set(np.unique(picks[picks >= 0])) == {0, 1, 2, 3}  # every head serves
    assert ((picks >= 0).sum(1) > 0).sum() == 4  # the same questions in every layer


def test_scoring_by_hand():
    # 3 questions, 1 layer, 2 heads; questions 0,1 correct, 2 wrong.
    effects = np.array([[[0.2, -0.1]], [[0.4, 0.3]], [[-0.5, 0.1]]])
    pos, neg, signed = head_matrices(effects, np.array([True, True, False]))
    np.testing.assert_allclose(pos, [[0.3, 0.15]])  # mean ReLU over correct
    np.testing.assert_allclose(neg, [[0.5, 0.0]])  # mean ReLU(−e) over wrong
    np.testing.assert_allclose(signed, [[(0.2 + 0.4 - 0.5) / 3, 0.3 / 3]])


def test_verify_candidates_alternate_positive_and_negative():
    effects = np.zeros((2, 2, 3))
    effects[0] = [[0.9, 0.1, 0.0], [0.0, 0.0, 0.5]]  # correct question
    effects[1] = [[0.0, 0.0, -0.8], [-0.2, 0.0, 0.0]]  # wrong question
    chosen = verify_candidates(effects, np.array([True, False]), "subset", 2)
    assert chosen.sum() == 2 and chosen[0, 0] and chosen[0, 2]  # best positive, best negative


class _MemoryCheckpoint:
    def __init__(self, fail_after: int | None = None):
        self.saved: dict = {}
        self.fail_after = fail_after

    def load(self):
        return dict(self.saved)

    def save(self, key, payload):
        self.saved[key] = payload
        if self.fail_after is not None and len(self.saved) >= self.fail_after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stored", [1, 2, "all"], ids=["after-1-layer", "after-2-layers", "every-layer-stored"])
@pytest.mark.parametrize("strategy", ["exact", "reference", "attribution+verify"])
def test_resume_gives_identical_matrices(tiny_vlm, items, strategy, stored):
    """Interrupted after `stored` layers were checkpointed ("all": every layer, the case where
    exact search used to leave layers 1… at zero), the resumed search equals the full one."""
    counting = _MemoryCheckpoint()
    full = search_heads(tiny_vlm, items, strategy=strategy, top_k=2, verify_k=4, checkpoint=counting)
    assert (np.abs(full.effects).max(axis=(0, 2)) > 1e-4).all(), "every layer must have effects, or zeros would pass"
    stored = len(counting.saved) if stored == "all" else stored
    assert len(counting.saved) >= stored >= 1
    ck = _MemoryCheckpoint(fail_after=stored)
    with pytest.raises(KeyboardInterrupt):
        search_heads(tiny_vlm, items, strategy=strategy, top_k=2, verify_k=4, checkpoint=ck)
    assert len(ck.saved) == stored
    ck.fail_after = None
    resumed = search_heads(tiny_vlm, items, strategy=strategy, top_k=2, verify_k=4, checkpoint=ck)
    np.testing.assert_array_equal(resumed.effects, full.effects)
    np.testing.assert_array_equal(resumed.matrices.positive, full.matrices.positive)
    np.testing.assert_array_equal(resumed.matrices.negative, full.matrices.negative)


def test_unknown_strategy_and_empty_items(tiny_vlm, items):
    with pytest.raises(ValueError):
        search_heads(tiny_vlm, items, strategy="nope")
    with pytest.raises(ValueError):
        search_heads(tiny_vlm, [], strategy="exact")
    assert set(STRATEGIES) == {"reference", "exact", "attribution", "attribution+verify"}
