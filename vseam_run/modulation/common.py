"""What the scale-matrix policies share: array plumbing (torch or numpy in, the same out),
head lists, and the random-head controls.

A *scale matrix* has shape ``[layers, heads]``; ``vseam_run/heads.py`` multiplies each head's
slice of the ``o_proj`` input by its entry, so 1 leaves a head alone, 0 silences it and 2
doubles its contribution. Every function here accepts and returns either a torch tensor or a
numpy array (whichever it was given), so search results can be used as they come and tests need
no model.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

Array = Any  # torch.Tensor | np.ndarray; kept loose so torch stays an optional import here


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as_float(x: Array) -> Array:
    """A floating-point copy-free view where possible, keeping the array library."""
    if _is_torch(x):
        return x if x.is_floating_point() else x.float()
    arr = np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _to_numpy(x: Array) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_2d(x: Array, name: str) -> None:
    if len(x.shape) != 2:
        raise ValueError(f"{name} must be a [layers, heads] matrix, got shape {tuple(x.shape)}")


def _ones_like(x: Array) -> Array:
    if _is_torch(x):
        import torch

        return torch.ones_like(x)
    return np.ones_like(x)


def top_heads(matrix: Array, k: int) -> list[tuple[int, int, float]]:
    """Up to ``k`` heads with score > 0 as ``(layer, head, score)``, strongest first.

    Equal scores are ordered by (layer, head) so the choice is reproducible.
    """
    _check_2d(matrix, "matrix")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    m = _to_numpy(matrix).astype(np.float64)
    flat = m.reshape(-1)
    candidates = np.flatnonzero(flat > 0)  # NaN > 0 is False, so NaNs never qualify
    # lexsort sorts by the last key first: score descending, then flat index ascending.
    order = candidates[np.lexsort((candidates, -flat[candidates]))][:k]
    heads = m.shape[1]
    return [(int(i // heads), int(i % heads), float(flat[i])) for i in order]


def _max_positive(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0



def random_heads(
    num_layers: int,
    num_heads: int,
    k: int,
    rng: np.random.Generator | int,
    exclude: Iterable[tuple[int, int]] = (),
) -> list[tuple[int, int]]:
    """``k`` distinct heads drawn uniformly, none in ``exclude``, sorted by (layer, head).

    The control for ablation: random heads, disjoint from the ones being tested, so a
    drop seen for the searched heads can be compared against chance. ``rng`` may be a
    numpy Generator or a seed.
    """
    if num_layers < 1 or num_heads < 1:
        raise ValueError(f"need at least one layer and head, got {num_layers} x {num_heads}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    excluded = {(int(layer), int(head)) for layer, head in exclude}
    pool = [(layer, head) for layer in range(num_layers) for head in range(num_heads) if (layer, head) not in excluded]
    if k > len(pool):
        raise ValueError(
            f"cannot draw {k} random heads: only {len(pool)} of {num_layers * num_heads} remain after excluding {len(excluded)}"
        )
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    picked = gen.choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in picked)


def permuted_scales(scales: Array, rng: np.random.Generator | int) -> Array:
    """The same scale values moved to randomly chosen heads: a permutation over heads.

    ``scales`` is ``[layers, heads]`` or ``[layers, groups, heads]`` (per position group);
    heads are permuted over all ``layers × heads`` slots, a head's values in every group
    moving together. So the control changes exactly as many heads as the policy, by
    exactly the same amounts, and differs only in *which* heads.
    """
    if len(scales.shape) not in (2, 3):
        raise ValueError(f"scales must be [layers, heads] or [layers, groups, heads], got shape {tuple(scales.shape)}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    arr = _to_numpy(scales)
    layers, heads = arr.shape[0], arr.shape[-1]
    # Put the head axis first, flattened with layers: [layers*heads, groups or 1].
    slots = np.moveaxis(arr.reshape(layers, -1, heads), 2, 1).reshape(layers * heads, -1)
    moved = slots[gen.permutation(layers * heads)]
    out = np.moveaxis(moved.reshape(layers, heads, -1), 1, 2).reshape(arr.shape)
    if _is_torch(scales):
        import torch

        return torch.as_tensor(out, dtype=scales.dtype, device=scales.device)
    return out
