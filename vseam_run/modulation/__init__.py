"""Modulation policies: one module per policy behind one small protocol (``base.Policy``).

A policy is built from the spec's ``modulation`` section, *fits* on the search split, *chooses*
its free parameters on val and returns an :class:`Intervention` (``intervention.py``): an object
that installs hooks on a model and removes them (``with iv.installed(vlm): ...``), knows its
matched random-head control, and is serialisable to tensors + metadata with a ``kind`` field
(:func:`save_file` / :func:`load_file`, :func:`state_to_saved` / :func:`state_from_saved`). The
modulation stage, the exported file and applying it to a model all use that same object.
A policy at strength 0 returns the identity.

Policies: ``paper`` (paper.py), ``linear`` (linear.py), ``topk`` (topk.py), ``learned``
(learned.py), ``none`` (none.py), and the field's rivals on the same protocol: ``ablate``
(AD-HH, ablate.py), ``steer`` (ICT / VTI, steer.py), ``image_attention`` (PAI / VAF,
image_attention.py).
"""

from __future__ import annotations

from vseam_run.modulation.base import POLICIES, Chosen, FitContext, Policy, policy_for, register_policy
from vseam_run.modulation.intervention import (
    Intervention,
    ScaleIntervention,
    State,
    from_state,
    load_file,
    register_kind,
    save_file,
    state_from_saved,
    state_to_saved,
)

# Importing a policy module registers it.
from vseam_run.modulation import learned, linear, none, paper, topk  # noqa: E402,F401  isort: skip
from vseam_run.modulation import ablate, image_attention, steer  # noqa: E402,F401  isort: skip

__all__ = [
    "Chosen", "FitContext", "Intervention", "POLICIES", "Policy", "ScaleIntervention", "State", "from_state",
    "load_file", "policy_for", "register_kind", "register_policy", "save_file", "state_from_saved", "state_to_saved",
]
