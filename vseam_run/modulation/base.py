"""The one small protocol every modulation policy follows.

A policy is built from its spec section (``modulation:``) and asked once to :meth:`Policy.choose`:
it may *fit* on the search split (the questions the heads were scored on) and *choose* its free
parameters on the val split — never on test — and returns a :class:`Chosen`: the
:class:`~vseam_run.modulation.intervention.Intervention` it settled on and the parameters that
produced it. What it tried is written through the context's sink (documents, metrics, log), so a
policy knows nothing of the store. At strength 0 every policy's intervention is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from vseam_run.modulation.intervention import Intervention

__all__ = ["Chosen", "FitContext", "POLICIES", "Policy", "policy_for", "register_policy"]


@dataclass
class Chosen:
    """The intervention a policy settled on and the parameters that produced it."""

    intervention: Intervention
    params: dict[str, Any]

    @property
    def scales(self):
        """The scale matrix, for the policies whose intervention is one (paper, linear, topk, learned, none)."""
        return self.intervention.scales  # type: ignore[attr-defined]


@dataclass
class FitContext:
    """What a policy may use: the model, the head search's result, the split sets (encoded on first
    use), the run's answer rule, where to write what it tried, and the run's seed."""

    vlm: Any
    result: Any  # SearchResult (``.matrices``: positive, negative, signed [L, H])
    sets: Any  # stages.modulate.SplitSets: ``get(split, why)`` → ScoredSet
    matcher: Any  # stages.modulate.Matcher: ``accuracy(rows)``
    sink: Any  # stages.modulate.Sink
    seed: int = 0

    def val_accuracy(self, why: str) -> Callable[[Intervention], float]:
        """Accuracy on val under an intervention, each distinct intervention evaluated once."""
        val = self.sets.get("val", why)
        seen: dict[bytes, float] = {}

        def acc(intervention: Intervention) -> float:
            key = intervention.fingerprint_key()
            if key not in seen:
                seen[key] = self.matcher.accuracy(val.run(intervention))
            return seen[key]

        return acc


class Policy:
    """Base of every policy: ``name`` is its ``modulation.policy`` value."""

    name: ClassVar[str] = ""

    def __init__(self, options: Any) -> None:
        self.options = options  # the spec's policy section (a pydantic model)

    def preflight(self, vlm: Any, items: list[Any]) -> None:
        """Before the run's long work: refuse (VseamError) a model this policy cannot act on."""

    def choose(self, ctx: FitContext) -> Chosen:
        raise NotImplementedError


POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


def policy_for(options: Any) -> Policy:
    """The policy object for a spec's ``modulation`` section (``None`` means no modulation)."""
    import vseam_run.modulation  # noqa: F401  (registers every policy module)

    name = "none" if options is None else options.policy
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name](options)
