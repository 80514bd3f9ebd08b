"""Moved to the package :mod:`vseam_run.modulation` (one module per policy behind one protocol);
this module keeps the old names importable: scale-matrix math, head lists, controls, λ selection."""

from vseam_run.modulation.common import (  # noqa: F401
    Array, _as_float, _check_2d, _is_torch, _max_positive, _ones_like, _to_numpy, permuted_scales, random_heads,
    top_heads,
)
from vseam_run.modulation.linear import ScoreSource, head_score, linear_scales  # noqa: F401
from vseam_run.modulation.paper import paper_scales  # noqa: F401
from vseam_run.modulation.select import (  # noqa: F401
    _TIE_TOL, DEFAULT_LAMBDA_GRID, GridChoice, GridPoint, LambdaChoice, LambdaPoint, select_grid, select_lambda,
)
from vseam_run.modulation.topk import topk_scales  # noqa: F401

__all__ = [
    "DEFAULT_LAMBDA_GRID", "LambdaChoice", "LambdaPoint", "GridChoice", "GridPoint", "ScoreSource", "head_score",
    "linear_scales", "paper_scales", "permuted_scales", "random_heads", "select_grid", "select_lambda", "top_heads",
    "topk_scales",
]
