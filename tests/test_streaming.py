"""Streaming (spec `stream: true`): every stage that re-uses encoded inputs can hold one batch at
a time, encoding it again when needed. These tests compare the streamed numbers with the held
ones, bit for bit, on the tiny models with amplified weights (so that the compared effects are
far above any tolerance): question sets re-scored under head edits (λ selection, evaluation,
controls), learned scales (training with the KL term, early stopping on val), the exact trace
(also resumed from a checkpoint) and the spec switch reaching every stage of a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_trace import amplify, make_pairs
from vseam_run import trace as tr
from vseam_run.data import toyworld
from vseam_run.heads import HeadEdit
from vseam_run.learned import fit_scales
from vseam_run.scoring import Item, ScoredSet


def _items(vlm, n: int, seed: int) -> list[Item]:
    ex = toyworld.sample_examples(seed, n, 32)
    gold = vlm.answer_token_ids([e.answer for e in ex])
    return [Item(f"q{seed}_{i}", e.image, e.question, e.answer, g, "c") for i, (e, g) in enumerate(zip(ex, gold)) if g is not None]


def test_streamed_question_set_scores_as_the_held_one(tiny_vlm):
    amplify(tiny_vlm)
    items = _items(tiny_vlm, 7, 3)
    held, streamed = ScoredSet(tiny_vlm, items, 3), ScoredSet(tiny_vlm, items, 3, stream=True)
    assert len(held.batches) == 3 and streamed.batches == []  # nothing kept between uses
    edits = {l: HeadEdit(factors=torch.linspace(0.0, 3.0, tiny_vlm.num_heads)) for l in range(tiny_vlm.num_layers)}
    base, edited = held.run(), held.run(edits)
    # The edits matter (gold answers are not the random model's, so their probabilities are small).
    assert max(abs(a["gold_prob"] - b["gold_prob"]) / a["gold_prob"] for a, b in zip(base, edited)) > 0.5
    assert streamed.run() == base and streamed.run(edits) == edited
    assert streamed.batches == []
    # The batches as a sequence (learned scales index them in a shuffled order).
    for a, b in zip(held.every_batch(), streamed.every_batch()[::-1][::-1]):
        assert torch.equal(a[1], b[1]) and [it.qid for it in a[2]] == [it.qid for it in b[2]]


def test_streamed_learned_scales_equal_the_held_fit(tiny_vlm):
    amplify(tiny_vlm)
    search, val = _items(tiny_vlm, 7, 4), _items(tiny_vlm, 4, 5)

    def fit(stream: bool):
        def acc(rows):
            return sum(r["correct"] for r in rows) / len(rows)

        return fit_scales(tiny_vlm, ScoredSet(tiny_vlm, search, 3, stream=stream), ScoredSet(tiny_vlm, val, 3, stream=stream),
                          epochs=2, patience=5, lr=0.2, kl=0.5, l2=0.1, seed=1, accuracy_fn=acc)

    held, streamed = fit(False), fit(True)
    assert float((held.scales - 1).abs().max()) > 1e-2  # the fit moved the scales
    assert torch.equal(held.scales, streamed.scales)
    assert [vars(h) for h in held.history] == [vars(h) for h in streamed.history]


def test_streamed_exact_trace_equals_the_held_one_and_resumes(llava_pairs):
    vlm, pairs = llava_pairs
    kw = dict(window=2, margin=0.0, batch_size=2, batch_rows=7)
    held = tr.exact_trace(vlm, pairs, **kw)
    saved: dict = {}

    class Store:
        def __init__(self, keep: int | None = None) -> None:
            self.keep = keep

        def load(self):
            return dict(list(saved.items())[: self.keep])

        def save(self, key, payload):
            saved[key] = payload

    streamed = tr.exact_trace(vlm, pairs, stream=True, checkpoint=Store(), **kw)  # stores every layer
    resumed = tr.exact_trace(vlm, pairs, stream=True, checkpoint=Store(keep=1), **kw)  # layer 0 stored, the rest computed
    finite = np.isfinite(held.patched)
    assert finite.any() and np.nanmax(np.abs(held.recovery())) > 1e-2
    for other in (streamed, resumed):
        np.testing.assert_array_equal(other.patched, held.patched)
        np.testing.assert_array_equal(other.p_source, held.p_source)
        np.testing.assert_array_equal(other.p_base, held.p_base)
    assert len(saved) == vlm.num_layers


def test_attribution_trace_and_lens_one_batch_at_a_time_match_the_whole_set(llava_pairs):
    """Attribution and the lens now go batch by batch: the numbers do not depend on the batching
    (each pair's rows are its own), so one batch of all pairs and batches of 2 agree."""
    vlm, pairs = llava_pairs
    whole = tr.attribution_trace(vlm, pairs, margin=0.0, batch_size=len(pairs))
    parts = tr.attribution_trace(vlm, pairs, margin=0.0, batch_size=2)
    assert np.nanmax(np.abs(whole.patched - whole.p_base[:, :, None, None, None])) > 1e-3
    np.testing.assert_allclose(parts.patched, whole.patched, atol=1e-5)
    lens_whole, lens_parts = tr.logit_lens(vlm, pairs, batch_size=len(pairs)), tr.logit_lens(vlm, pairs, batch_size=2)
    np.testing.assert_allclose(lens_parts.prob, lens_whole.prob, atol=1e-5)


def _llava(entry):
    from tests.conftest import load_vlm

    vlm = load_vlm(entry)
    amplify(vlm)
    return vlm, make_pairs(vlm, 5)


@pytest.fixture(scope="module")
def llava_pairs(tiny_llava_entry):
    return _llava(tiny_llava_entry)
