"""``policy: none`` (or no ``modulation`` section) — the identity: every head at scale 1, so the
evaluation compares the baseline with itself and only the yes/no measures and intervals are new."""

from __future__ import annotations

import torch

from vseam_run.modulation.base import Chosen, FitContext, Policy, register_policy
from vseam_run.modulation.intervention import ScaleIntervention


@register_policy
class NoModulation(Policy):
    name = "none"

    def choose(self, ctx: FitContext) -> Chosen:
        return Chosen(ScaleIntervention(torch.ones(tuple(ctx.result.matrices.signed.shape))), {"policy": "none"})
