"""The head primitive at the o_proj input."""

from __future__ import annotations

import torch

from vseam_run.heads import ablate, ablation_delta, scale


def test_mean_ablation_replaces_slice_by_mean_of_other_heads():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4 * 5)  # 4 heads of width 5
    mask = torch.tensor([[False, True, False, False], [True, False, False, True]])
    out = ablate(x, 4, mask, "mean").view(2, 3, 4, 5)
    xv = x.view(2, 3, 4, 5)
    # Row 0: head 1 := mean of heads 0, 2, 3.
    assert torch.allclose(out[0, :, 1], (xv[0, :, 0] + xv[0, :, 2] + xv[0, :, 3]) / 3)
    assert torch.equal(out[0, :, [0, 2, 3]], xv[0, :, [0, 2, 3]])
    # Row 1: heads 0 and 3 ablated := mean of the kept heads 1, 2.
    assert torch.allclose(out[1, :, 0], (xv[1, :, 1] + xv[1, :, 2]) / 2)
    assert torch.allclose(out[1, :, 3], (xv[1, :, 1] + xv[1, :, 2]) / 2)


def test_zero_ablation_and_scale():
    x = torch.arange(24, dtype=torch.float32).view(1, 2, 12)  # 3 heads of width 4
    z = ablate(x, 3, torch.tensor([[False, False, True]]), "zero").view(1, 2, 3, 4)
    assert torch.all(z[..., 2, :] == 0) and torch.equal(z[..., :2, :], x.view(1, 2, 3, 4)[..., :2, :])
    s = scale(x, 3, torch.tensor([1.0, 0.0, 2.0])).view(1, 2, 3, 4)
    xv = x.view(1, 2, 3, 4)
    assert torch.equal(s[..., 0, :], xv[..., 0, :]) and torch.all(s[..., 1, :] == 0)
    assert torch.equal(s[..., 2, :], 2 * xv[..., 2, :])


def test_ablation_delta_matches_single_head_ablation():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16)
    for mode in ("mean", "zero"):
        delta = ablation_delta(x, 4, mode)
        for h in range(4):
            mask = torch.zeros(1, 4, dtype=torch.bool)
            mask[0, h] = True
            diff = (ablate(x, 4, mask, mode) - x).view(2, 3, 4, 4)
            assert torch.allclose(diff[:, :, h], delta[:, :, h], atol=1e-6)
