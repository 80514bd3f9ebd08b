"""Modulation policies: scale matrices, head lists and λ selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vseam_run.modulate import (
    DEFAULT_LAMBDA_GRID,
    LambdaChoice,
    head_score,
    linear_scales,
    random_heads,
    select_lambda,
    top_heads,
    topk_scales,
)

SCORE = np.array(
    [
        [0.50, -0.20, 0.00],
        [1.50, -2.00, 0.05],
    ]
)


# --- linear_scales ------------------------------------------------------------


def test_linear_lambda_zero_is_exact_ones() -> None:
    weird = np.array([[np.inf, -3.0], [1e9, 0.0]])
    out = linear_scales(weird, 0.0)
    assert out.dtype == np.float64
    assert np.array_equal(out, np.ones((2, 2)))
    t = linear_scales(torch.tensor(SCORE, dtype=torch.float32), 0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert torch.equal(t, torch.ones(2, 3))


def test_linear_hand_computed() -> None:
    out = linear_scales(SCORE, 0.5)
    expected = np.array([[1.25, 0.90, 1.00], [1.75, 0.00, 1.025]])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_linear_clips_at_lo_and_hi() -> None:
    out = linear_scales(SCORE, 1.0, lo=0.5, hi=1.5)
    # 1+0.5=1.5, 1-0.2=0.8, 1, 1+1.5→1.5, 1-2→0.5, 1.05
    np.testing.assert_allclose(out, [[1.5, 0.8, 1.0], [1.5, 0.5, 1.05]], atol=1e-12)
    assert out.min() == 0.5 and out.max() == 1.5
    neg = linear_scales(SCORE, -2.0)  # sign flips the direction: helpful heads damped
    np.testing.assert_allclose(neg, [[0.0, 1.4, 1.0], [0.0, 2.0, 0.9]], atol=1e-12)


def test_linear_eps_zeroes_small_scores() -> None:
    out = linear_scales(SCORE, 1.0, eps=0.2)
    # |−0.2| <= 0.2 and 0.05 <= 0.2 → scale 1; the rest as usual.
    np.testing.assert_allclose(out, [[1.5, 1.0, 1.0], [2.0, 0.0, 1.0]], atol=1e-12)


def test_linear_torch_matches_numpy_and_leaves_input_alone() -> None:
    t = torch.tensor(SCORE)
    before = t.clone()
    out = linear_scales(t, 0.7, eps=0.1)
    assert torch.equal(t, before)
    np.testing.assert_allclose(out.numpy(), linear_scales(SCORE, 0.7, eps=0.1), atol=1e-12)
    # Integer scores are promoted rather than truncated.
    ints = linear_scales(torch.tensor([[1, -1]]), 0.5)
    assert ints.dtype == torch.float32 and ints.tolist() == [[1.5, 0.5]]


def test_linear_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"\[layers, heads\]"):
        linear_scales(np.ones(4), 1.0)
    with pytest.raises(ValueError, match="contain 1"):
        linear_scales(SCORE, 1.0, lo=1.2, hi=2.0)
    with pytest.raises(ValueError, match="eps"):
        linear_scales(SCORE, 1.0, eps=-1)
    with pytest.raises(ValueError, match="NaN"):
        linear_scales(np.array([[np.nan, 1.0]]), 1.0)


# --- head_score ---------------------------------------------------------------


def test_head_score_sources() -> None:
    pos = np.array([[0.3, 0.0]])
    neg = np.array([[0.1, 0.4]])
    signed = np.array([[0.2, -0.5]])
    np.testing.assert_allclose(head_score(pos, neg, signed, "pos_minus_neg"), [[0.2, -0.4]])
    assert head_score(pos, neg, signed, "signed") is signed
    assert head_score(None, None, signed, "signed") is signed
    with pytest.raises(ValueError, match="needs the signed"):
        head_score(pos, neg, None, "signed")
    with pytest.raises(ValueError, match="differ in shape"):
        head_score(pos, np.zeros((2, 2)), None, "pos_minus_neg")
    with pytest.raises(ValueError, match="unknown score source"):
        head_score(pos, neg, signed, "mean")  # type: ignore[arg-type]


# --- top_heads / random_heads -------------------------------------------------


def test_top_heads_sorted_positive_only_with_stable_ties() -> None:
    m = np.array([[0.1, 0.0, 0.3], [0.3, -1.0, np.nan]])
    assert top_heads(m, 10) == [(0, 2, 0.3), (1, 0, 0.3), (0, 0, 0.1)]
    assert top_heads(m, 1) == [(0, 2, 0.3)]
    assert top_heads(m, 0) == []
    assert top_heads(torch.tensor(m), 2) == [(0, 2, 0.3), (1, 0, 0.3)]


def test_random_heads_excludes_and_is_reproducible() -> None:
    exclude = [(0, 0), (0, 1), (1, 2)]
    a = random_heads(3, 4, 5, np.random.default_rng(0), exclude=exclude)
    assert a == random_heads(3, 4, 5, 0, exclude=exclude)
    assert len(a) == len(set(a)) == 5
    assert a == sorted(a)
    assert not set(a) & set(exclude)
    assert all(0 <= layer < 3 and 0 <= head < 4 for layer, head in a)
    # Drawing everything that is left returns exactly the complement.
    everything = random_heads(2, 2, 3, 1, exclude=[(1, 1)])
    assert everything == [(0, 0), (0, 1), (1, 0)]
    with pytest.raises(ValueError, match="only 3 of 4 remain"):
        random_heads(2, 2, 4, 0, exclude=[(1, 1)])


# --- topk_scales ----------------------------------------------------------------


def test_topk_hand_computed() -> None:
    pos = np.array([[0.9, 0.0, 0.2], [0.5, 0.1, 0.0]])
    neg = np.array([[0.0, 0.8, 0.0], [0.0, 0.0, 0.3]])
    out = topk_scales(pos, neg, k=2, alpha=2.0, beta=0.0)
    # top-2 positive: (0,0)=0.9, (1,0)=0.5; top-2 negative: (0,1)=0.8, (1,2)=0.3
    np.testing.assert_array_equal(out, [[2.0, 0.0, 1.0], [2.0, 1.0, 0.0]])


def test_topk_fewer_candidates_than_k_and_k_zero() -> None:
    pos = np.array([[0.0, 0.4]])
    neg = np.array([[-0.1, 0.0]])  # nothing positive: no negative heads at all
    np.testing.assert_array_equal(topk_scales(pos, neg, 5, 1.5, 0.5), [[1.0, 1.5]])
    np.testing.assert_array_equal(topk_scales(pos, neg, 0, 1.5, 0.5), [[1.0, 1.0]])


def test_topk_conflict_resolved_by_normalised_score() -> None:
    # Head (0,0) is in both lists. Normalised: pos 0.4/0.8 = 0.5, neg 0.06/0.1 = 0.6 → beta.
    # Head (0,2) is in both: pos 0.8/0.8 = 1.0, neg 0.02/0.1 = 0.2 → alpha.
    pos = np.array([[0.4, 0.0, 0.8]])
    neg = np.array([[0.06, 0.1, 0.02]])
    out = topk_scales(pos, neg, k=3, alpha=3.0, beta=0.25)
    np.testing.assert_array_equal(out, [[0.25, 0.25, 3.0]])
    # Equal normalised scores cancel: the head stays at 1.
    tie = topk_scales(np.array([[0.5, 1.0]]), np.array([[0.1, 0.2]]), k=2, alpha=2.0, beta=0.0)
    np.testing.assert_array_equal(tie, [[1.0, 1.0]])


def test_topk_torch_in_torch_out() -> None:
    pos = torch.tensor([[0.9, 0.0]], dtype=torch.float32)
    neg = torch.tensor([[0.0, 0.5]], dtype=torch.float32)
    out = topk_scales(pos, neg, 1, 2.0, 0.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.tolist() == [[2.0, 0.0]]
    with pytest.raises(ValueError, match="differ in shape"):
        topk_scales(pos, torch.zeros(2, 2), 1, 2.0, 0.0)


# --- select_lambda --------------------------------------------------------------


def test_default_grid_includes_zero() -> None:
    assert 0.0 in DEFAULT_LAMBDA_GRID
    assert list(DEFAULT_LAMBDA_GRID) == sorted(DEFAULT_LAMBDA_GRID)


def test_select_lambda_best_and_table() -> None:
    acc = {0.0: 0.50, 0.5: 0.55, 1.0: 0.60, 2.0: 0.58}
    choice = select_lambda([0.0, 0.5, 1.0, 2.0], acc.__getitem__)
    assert isinstance(choice, LambdaChoice)
    assert choice.best == 1.0
    assert choice.table == [(0.0, 0.50), (0.5, 0.55), (1.0, 0.60), (2.0, 0.58)]
    assert choice.table[2].val_accuracy == 0.60


def test_select_lambda_ties_go_to_smaller_abs_then_positive() -> None:
    acc = {4.0: 0.7, -1.0: 0.7, 1.0: 0.7, 0.5: 0.6}
    assert select_lambda([4.0, -1.0, 1.0, 0.5], acc.__getitem__).best == 1.0
    assert select_lambda([4.0, -1.0], acc.__getitem__).best == -1.0
    # Nothing beats no modulation → λ = 0.
    assert select_lambda([2.0, 0.0, 1.0], lambda lam: 0.5).best == 0.0
    # Float noise in equal accuracies is a tie, not a win.
    noisy = {0.5: 0.3, 1.0: 0.1 + 0.2}
    assert select_lambda([1.0, 0.5], noisy.__getitem__).best == 0.5


def test_select_lambda_evaluates_each_once_and_handles_nan() -> None:
    calls: list[float] = []

    def evaluate(lam: float) -> float:
        calls.append(lam)
        return float("nan") if lam == 2.0 else 0.4

    choice = select_lambda([1, 2, 1, 0], evaluate)
    assert calls == [1.0, 2.0, 0.0]
    assert choice.best == 0.0
    with pytest.raises(ValueError, match="empty"):
        select_lambda([], evaluate)
