"""``policy: ablate`` — deactivate the heads that drive wrong answers, in the manner of AD-HH
(ICLR 2025): the top-K *negative* heads of the head search (those whose ablation raised the gold
probability on wrongly answered search questions) are zeroed at the ``o_proj`` input (or set to
the other heads' mean, ``mode: mean``). K is chosen on val from ``k_grid``; K = 0 (always tried)
is the identity, so the policy can only beat the unmodulated model on val, never be forced on it.

Control: K heads drawn at random, none of the chosen ones, ablated the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar, ContextManager

import numpy as np
import torch

from vseam_run.heads import ablate_heads_edits, edit_heads
from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.modulation.common import random_heads, top_heads
from vseam_run.modulation.intervention import Intervention, State, register_kind
from vseam_run.modulation.select import select_grid


@register_kind
class AblateIntervention(Intervention):
    """A fixed set of heads ablated in every row (``mode``: zero or mean of the other heads)."""

    kind: ClassVar[str] = "ablate"
    control_label: ClassVar[str] = "as many random heads, ablated the same way"

    def __init__(self, heads: list[tuple[int, int]], num_layers: int, num_heads: int, mode: str = "zero") -> None:
        self.heads = sorted((int(l), int(h)) for l, h in heads)
        self.num_layers, self.num_heads, self.mode = num_layers, num_heads, mode

    def installed(self, vlm) -> ContextManager[None]:
        return edit_heads(vlm, ablate_heads_edits(self.heads, vlm.num_heads, self.mode))  # type: ignore[arg-type]

    def is_identity(self) -> bool:
        return not self.heads

    def heads_changed(self) -> float:
        return float(len(self.heads))

    def control(self, rng: np.random.Generator) -> "AblateIntervention":
        drawn = random_heads(self.num_layers, self.num_heads, len(self.heads), rng, exclude=self.heads)
        return AblateIntervention(drawn, self.num_layers, self.num_heads, self.mode)

    def state(self) -> State:
        heads = torch.tensor(self.heads, dtype=torch.int64).reshape(-1, 2)
        return State({"heads": heads}, {"kind": self.kind, "mode": self.mode, "num_layers": self.num_layers,
                                        "num_heads": self.num_heads})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "AblateIntervention":
        heads = [tuple(map(int, row)) for row in tensors["heads"].reshape(-1, 2).tolist()]
        return cls(heads, int(meta["num_layers"]), int(meta["num_heads"]), str(meta.get("mode", "zero")))

    def describe(self) -> dict[str, Any]:
        return {"heads": [list(h) for h in self.heads], "mode": self.mode}


@register_policy
class Ablate(Policy):
    name = "ablate"

    def intervention(self, negative: Any, k: int, num_layers: int, num_heads: int) -> AblateIntervention:
        heads = [(l, h) for l, h, _ in top_heads(negative, k)]
        return AblateIntervention(heads, num_layers, num_heads, self.options.mode)

    def choose(self, ctx: FitContext) -> Chosen:
        pol, sink = self.options, ctx.sink
        neg = ctx.result.matrices.negative
        if neg is None:
            raise ValueError("policy ablate needs the search's negative head scores, which are missing")
        L, H = tuple(neg.shape)
        ks = [0, *pol.k_grid] if pol.k == "auto" else [int(pol.k)]
        ks = list(dict.fromkeys(int(k) for k in ks))
        if len(ks) > 1:
            acc = ctx.val_accuracy("modulation.k: auto")
            choice = select_grid([{"k": k} for k in ks], lambda p: acc(self.intervention(neg, int(p["k"]), L, H)),
                                 lambda p: (p["k"],))
            k = int(choice.best["k"])
            sink.document("ablate_selection", choice.rows())
            sink.log("  K on val: " + ", ".join(f"{int(p.params['k'])}→{p.val_accuracy:.3f}" for p in choice.table)
                     + f"; chose K = {k}")
        else:
            k = ks[0]
        iv = self.intervention(neg, k, L, H)
        sink.record({"modulation.k": float(k)})
        return Chosen(iv, {"policy": "ablate", "k": k, "mode": pol.mode})
