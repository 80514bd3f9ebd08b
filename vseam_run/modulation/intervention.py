"""Interventions: what a modulation policy returns, one object for the stage, the exported file
and ``apply_modulation``.

An intervention *installs* hooks on a loaded model and removes them again
(``with intervention.installed(vlm): ...``); outside the block the model is untouched. It is
serialisable as tensors + metadata (:meth:`Intervention.state`, :func:`from_state`): the
metadata carry a ``kind`` naming the class that rebuilds it, so a file written by one run can be
applied by anyone holding the package. Kinds:

* ``scales``: per-head factors on the heads' slices of the ``o_proj`` input, ``[L, H]`` or
  ``[L, 2, H]`` (rest, last position) — the paper, linear, top-k, learned and none policies;
* ``ablate``, ``steer``, ``image_attention``: see their policy modules.

An intervention also knows its *matched random-head control* (:meth:`control`): the same change
on randomly chosen heads, so a gain can be compared against chance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, ContextManager

import numpy as np
import torch

from vseam_run.heads import edit_heads

__all__ = ["Intervention", "ScaleIntervention", "State", "from_state", "load_file", "register_kind", "save_file",
           "state_from_saved", "state_to_saved"]

_KINDS: dict[str, type["Intervention"]] = {}


def register_kind(cls: type["Intervention"]) -> type["Intervention"]:
    """Class decorator: make ``cls`` rebuildable from a state whose metadata say ``kind: cls.kind``."""
    _KINDS[cls.kind] = cls
    return cls


@dataclass
class State:
    """An intervention as data: named tensors and JSON-able metadata (``meta["kind"]`` says which)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])


class Intervention:
    """Base of every intervention (see the module docstring)."""

    kind: ClassVar[str] = ""
    control_label: ClassVar[str] = "same change"  # how the random-head control matches it, for the log

    def installed(self, vlm) -> ContextManager[None]:
        """Context manager: the hooks on ``vlm`` while the block runs, removed after (also on error)."""
        raise NotImplementedError

    def is_identity(self) -> bool:
        """True when installing it changes nothing (a policy at strength 0)."""
        raise NotImplementedError

    def heads_changed(self) -> float:
        """How many heads it changes (as recorded in ``modulation.heads_changed``)."""
        raise NotImplementedError

    def control(self, rng: np.random.Generator) -> "Intervention":
        """The same change on random heads: one draw of the matched random-head control."""
        raise NotImplementedError

    def state(self) -> State:
        """Tensors + metadata from which :func:`from_state` rebuilds an equal intervention."""
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "Intervention":
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the run's ``modulation`` document shows of it (JSON-able)."""
        return {}

    def fingerprint_key(self) -> bytes:
        """Bytes equal for equal interventions (to evaluate each distinct one once)."""
        st = self.state()
        parts = [json.dumps(st.meta, sort_keys=True, default=str).encode()]
        parts += [name.encode() + t.detach().cpu().contiguous().numpy().tobytes() for name, t in sorted(st.tensors.items())]
        return b"\0".join(parts)


def from_state(state: State) -> Intervention:
    """Rebuild an intervention from its state (the class is chosen by ``meta['kind']``)."""
    kind = state.meta.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown intervention kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind].from_tensors(state.tensors, state.meta)


# ---------------------------------------------------------------------------
# The scale intervention (paper, linear, topk, learned, none)
# ---------------------------------------------------------------------------


@register_kind
class ScaleIntervention(Intervention):
    """Per-head factors on the ``o_proj`` input: ``[L, H]`` or ``[L, 2, H]`` (rest, last position)."""

    kind: ClassVar[str] = "scales"
    control_label: ClassVar[str] = "same scale values"

    def __init__(self, scales: torch.Tensor) -> None:
        self.scales = scales

    @classmethod
    def of(cls, x: Any) -> "ScaleIntervention":
        """From a scale matrix as numpy or torch (as float32 on the CPU)."""
        from vseam_run.modulation.common import _to_numpy

        return cls(torch.as_tensor(np.asarray(_to_numpy(x), dtype=np.float32)))

    def edits(self) -> dict:
        from vseam_run.modulation.learned import edits_for

        return edits_for(self.scales)

    def installed(self, vlm) -> ContextManager[None]:
        return edit_heads(vlm, self.edits())

    def is_identity(self) -> bool:
        return bool(torch.all(self.scales == 1))

    def heads_changed(self) -> float:
        return float((self.scales != 1).reshape(-1).sum())

    def control(self, rng: np.random.Generator) -> "ScaleIntervention":
        from vseam_run.modulation.common import permuted_scales

        return ScaleIntervention(torch.as_tensor(permuted_scales(self.scales.numpy(), rng)))

    def state(self) -> State:
        return State({"scales": self.scales}, {"kind": self.kind})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "ScaleIntervention":
        return cls(tensors["scales"].to(torch.float32))

    def describe(self) -> dict[str, Any]:
        return {"scales": self.scales.tolist()}

    def fingerprint_key(self) -> bytes:
        return self.scales.numpy().tobytes()


# ---------------------------------------------------------------------------
# Saving: in the run ledger (JSON) and as a file (safetensors + metadata)
# ---------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def state_to_saved(intervention: Intervention) -> dict[str, Any]:
    """JSON-able form for the run's ledger (tensors as nested lists: float32 round-trips exactly)."""
    st = intervention.state()
    return {"meta": st.meta, "tensors": {name: {"dtype": str(t.dtype).removeprefix("torch."), "data": t.tolist()}
                                         for name, t in st.tensors.items()}}


def state_from_saved(saved: Any) -> Intervention:
    """Inverse of :func:`state_to_saved`; a bare nested list (ledgers written before interventions
    had kinds) is a scale matrix."""
    if isinstance(saved, list):
        return ScaleIntervention(torch.tensor(saved, dtype=torch.float32))
    tensors = {name: torch.tensor(t["data"], dtype=_DTYPES[t["dtype"]]) for name, t in saved["tensors"].items()}
    return from_state(State(tensors, dict(saved["meta"])))


def save_file(intervention: Intervention, path: Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write an intervention as safetensors: its tensors, and in the header ``vseam.intervention``
    (the metadata as JSON, ``kind`` included) plus ``extra_meta`` (e.g. the run and model it is for)."""
    from safetensors.torch import save_file as st_save

    st = intervention.state()
    header = {"vseam.intervention": json.dumps(st.meta, sort_keys=True, default=str)}
    for key, value in (extra_meta or {}).items():
        header[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    st_save({k: t.detach().cpu().contiguous() for k, t in st.tensors.items()}, str(path), metadata=header)
    return Path(path)


def load_file(path: Path) -> tuple[Intervention, dict[str, str]]:
    """Read a file written by :func:`save_file`: the intervention and the header's other entries."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata() or {})
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    if "vseam.intervention" not in header:
        raise ValueError(f"{path}: not a vseam modulation file (no 'vseam.intervention' entry in its header)")
    meta = json.loads(header.pop("vseam.intervention"))
    return from_state(State(tensors, meta)), header
