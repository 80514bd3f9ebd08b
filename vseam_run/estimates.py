"""Which of a run's scores are first-order estimates rather than measured effects (issue 24,
item 10): `vseam show` and the HTML report mark them. Attribution (gradient × activation
difference) underrates large effects: on toy-llava relations it scored L0.H0 at 0.051 where
exact ablation measures 0.36."""

from __future__ import annotations

from typing import Any

ESTIMATE_MARK = "≈"


def head_scores_estimated(heads: dict[str, Any] | None) -> bool:
    """Whether the top head scores are first-order estimates (strategy: attribution)."""
    return bool(heads) and heads.get("strategy") == "attribution"


def estimate_notes(heads: dict[str, Any] | None, spec: dict[str, Any] | None = None) -> list[str]:
    """One sentence per kind of score in the run that is a first-order estimate."""
    notes = []
    strategy = (heads or {}).get("strategy")
    if strategy == "attribution":
        notes.append(f"{ESTIMATE_MARK} head scores are first-order estimates (search.strategy: attribution), not measured "
                     "ablations: they can underrate large effects; use exact or attribution+verify to measure them")
    elif strategy == "attribution+verify":
        notes.append("the top heads' scores were re-measured exactly (attribution+verify); the other heads' scores "
                     "(heatmaps) are first-order estimates")
    trace = (spec or {}).get("trace") or {}
    if isinstance(trace, dict) and trace.get("method") == "attribution":
        notes.append(f"{ESTIMATE_MARK} tracing effects are first-order estimates (trace.method: attribution), not patched runs")
    return notes
