"""The paper's top-K policy, grid selection and the random-head control (pure numpy / torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vseam_run.modulate import paper_scales, permuted_scales, select_grid

POS = np.array([[0.0, 0.4, 0.1, 0.0],
                [0.8, 0.0, 0.2, 0.05]])
NEG = np.array([[0.3, 0.0, 0.0, 0.6],
                [0.0, 0.0, 0.15, 0.0]])


def test_paper_scales_exactly_the_top_k_with_the_formula() -> None:
    s = paper_scales(POS, NEG, k=2, lam=0.5)
    expected = np.ones((2, 4))
    expected[1, 0] = 1 + 0.5 * 0.8 / 0.8   # top positive
    expected[0, 1] = 1 + 0.5 * 0.4 / 0.8   # second positive
    expected[0, 3] = 1 - 0.5 * 0.6 / 0.6   # top negative
    expected[0, 0] = 1 - 0.5 * 0.3 / 0.6   # second negative
    assert np.array_equal(s, expected)
    # Heads outside both top-2 lists are exactly 1, even with positive scores (0.1, 0.2, 0.05, 0.15).
    assert s[0, 2] == 1.0 and s[1, 2] == 1.0 and s[1, 3] == 1.0


def test_paper_scales_lambda_zero_clip_and_overlap() -> None:
    assert np.array_equal(paper_scales(POS, NEG, k=4, lam=0.0), np.ones((2, 4)))
    # λ = 3: the top positive head would reach 4 and the top negative −2; the clip holds them.
    s = paper_scales(POS, NEG, k=1, lam=3.0, lo=0.0, hi=2.0)
    assert s[1, 0] == 2.0 and s[0, 3] == 0.0
    # A head in both lists gets both terms: equal normalised evidence cancels to exactly 1.
    pos = np.array([[1.0, 0.5]])
    neg = np.array([[2.0, 0.0]])
    assert np.array_equal(paper_scales(pos, neg, k=2, lam=1.0), np.array([[1.0, 1.5]]))


def test_paper_scales_torch_in_torch_out_and_errors() -> None:
    t = paper_scales(torch.tensor(POS, dtype=torch.float32), torch.tensor(NEG, dtype=torch.float32), k=2, lam=0.5)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert np.allclose(t.numpy(), paper_scales(POS, NEG, k=2, lam=0.5))
    with pytest.raises(ValueError, match="lambda"):
        paper_scales(POS, NEG, k=2, lam=-1.0)
    with pytest.raises(ValueError, match="clip"):
        paper_scales(POS, NEG, k=2, lam=1.0, lo=1.2)
    with pytest.raises(ValueError, match="shape"):
        paper_scales(POS, NEG[:, :3], k=2, lam=1.0)


def test_select_grid_best_and_gentlest_on_ties() -> None:
    cands = [{"k": k, "lam": lam} for k in (1, 4) for lam in (0.0, 0.5, 1.0)]
    acc = {(1, 0.0): 0.5, (1, 0.5): 0.7, (1, 1.0): 0.6, (4, 0.0): 0.5, (4, 0.5): 0.7, (4, 1.0): 0.7}
    calls = []

    def ev(p):
        calls.append(p)
        return acc[(p["k"], p["lam"])]

    choice = select_grid(cands, ev, lambda p: (p["lam"], p["k"]))
    assert choice.best == {"k": 1, "lam": 0.5}  # three tie at 0.7; smallest λ, then K
    assert len(choice.table) == 6 and len(calls) == 6
    # NaN counts as worst.
    assert select_grid([{"x": 1}, {"x": 2}], lambda p: float("nan") if p["x"] == 1 else 0.0, lambda p: (p["x"],)).best == {"x": 2}
    with pytest.raises(ValueError):
        select_grid([], ev, lambda p: ())


def test_permuted_scales_same_values_on_other_heads() -> None:
    s = np.ones((4, 8))
    s[0, 1], s[2, 5], s[3, 7] = 1.5, 0.25, 2.0
    a = permuted_scales(s, 0)
    assert a.shape == s.shape
    assert np.array_equal(np.sort(a.reshape(-1)), np.sort(s.reshape(-1)))  # the same values
    assert int((a != 1).sum()) == 3  # as many heads changed as the policy changes
    assert np.array_equal(a, permuted_scales(s, 0))  # seeded
    draws = [permuted_scales(s, seed) for seed in range(5)]
    assert any(not np.array_equal(d, s) for d in draws)  # heads really move
    t = permuted_scales(torch.tensor(s, dtype=torch.float32), 0)
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), a.astype(np.float32))


def test_permuted_scales_position_groups_move_together() -> None:
    s = np.ones((3, 2, 4))
    s[1, 0, 2], s[1, 1, 2] = 0.5, 1.75  # one head, two position groups
    for seed in range(6):
        a = permuted_scales(s, seed)
        layer, head = np.argwhere(a[:, 0, :] == 0.5)[0]
        assert a[layer, 1, head] == 1.75 and int((a != 1).sum()) == 2
    with pytest.raises(ValueError):
        permuted_scales(np.ones(5), 0)
