"""The one head primitive: per-head ablation or scaling at the input of a layer's o_proj.

The input of the attention output projection is the concatenation of the heads' outputs,
`[batch, tokens, heads * head_dim]` (also under grouped-query attention, where only the keys
and values are shared). Editing a head's slice there removes or rescales exactly that head's
contribution to the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from vseam_run.vlm import pre_hooks

AblationMode = Literal["mean", "zero"]


def ablate(x: torch.Tensor, num_heads: int, mask: torch.Tensor, mode: AblationMode) -> torch.Tensor:
    """Ablate heads per row. `mask` is bool [rows or 1, heads]: True = ablate that head in that row.

    mean: the slice becomes the mean of the row's *non-ablated* heads' slices at each position
    (for a single ablated head: the mean of the other heads, the paper's rule). zero: zeros.
    """
    b, t, width = x.shape
    xv = x.view(b, t, num_heads, width // num_heads)
    m = mask.to(x.device)[:, None, :, None]  # [rows, 1, H, 1]
    if mode == "zero":
        return (xv * (~m).to(x.dtype)).view(b, t, width)
    keep = (~m).to(x.dtype)
    mean_keep = (xv * keep).sum(2, keepdim=True) / keep.sum(2, keepdim=True).clamp(min=1)
    return torch.where(m, mean_keep.expand_as(xv), xv).reshape(b, t, width)


def scale(x: torch.Tensor, num_heads: int, factors: torch.Tensor) -> torch.Tensor:
    """Multiply each head's slice by its factor (`factors`: [heads])."""
    b, t, width = x.shape
    f = factors.to(device=x.device, dtype=x.dtype).repeat_interleave(width // num_heads)
    return x * f


def ablation_delta(x: torch.Tensor, num_heads: int, mode: AblationMode) -> torch.Tensor:
    """For every head separately: (ablated − original) of its own slice, [b, t, H, d].

    Used by attribution: the first-order effect of ablating head h is <grad_h, delta_h>.
    """
    b, t, width = x.shape
    xv = x.view(b, t, num_heads, width // num_heads)
    if mode == "zero":
        return -xv
    others_mean = (xv.sum(2, keepdim=True) - xv) / max(num_heads - 1, 1)
    return others_mean - xv


@dataclass
class HeadEdit:
    """What to do to one layer's heads: ablate some (per row) and/or scale all."""

    ablate_mask: torch.Tensor | None = None  # bool [rows or 1, H]
    mode: AblationMode = "mean"
    factors: torch.Tensor | None = None  # [H]

    def apply(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        if self.factors is not None:
            x = scale(x, num_heads, self.factors)
        if self.ablate_mask is not None:
            x = ablate(x, num_heads, self.ablate_mask, self.mode)
        return x


def _o_proj_pre_hooks(vlm, hooks: dict[int, Callable]):
    """Context manager: forward pre-hooks on the o_proj of the given layers for the block's duration."""
    return pre_hooks([(vlm.o_proj(layer), fn) for layer, fn in hooks.items()])


def edit_heads(vlm, edits: dict[int, HeadEdit]):
    """Context manager: apply `edits` (layer → HeadEdit) to the o_proj inputs while the block runs."""

    def hook_for(e: HeadEdit) -> Callable:
        return lambda _mod, args: (e.apply(args[0], vlm.num_heads),) + tuple(args[1:])

    return _o_proj_pre_hooks(vlm, {layer: hook_for(e) for layer, e in edits.items()})


def capture_o_proj_inputs(vlm, store: list):
    """Context manager: record every layer's o_proj input (kept in the autograd graph) in `store[layer]`."""
    store[:] = [None] * vlm.num_layers

    def hook_for(layer: int) -> Callable:
        return lambda _mod, args: store.__setitem__(layer, args[0])

    return _o_proj_pre_hooks(vlm, {layer: hook_for(layer) for layer in range(vlm.num_layers)})


def scale_edits(factors: torch.Tensor) -> dict[int, HeadEdit]:
    """HeadEdits from a [layers, heads] scale matrix, skipping layers that are all ones."""
    return {l: HeadEdit(factors=factors[l]) for l in range(factors.shape[0]) if not torch.all(factors[l] == 1)}


def ablate_heads_edits(heads: list[tuple[int, int]], num_heads: int, mode: AblationMode) -> dict[int, HeadEdit]:
    """HeadEdits ablating a fixed set of (layer, head) in every row."""
    edits: dict[int, HeadEdit] = {}
    for layer, head in heads:
        e = edits.setdefault(layer, HeadEdit(ablate_mask=torch.zeros(1, num_heads, dtype=torch.bool), mode=mode))
        e.ablate_mask[0, head] = True
    return edits
