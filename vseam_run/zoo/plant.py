"""Planting known heads into a checkpoint: ground truth the head search must recover.

A planted head is a head whose slice of the attention output projection's *input* is multiplied
by a factor, written into the weights: o_proj computes ``W x``, and head h's slice of x meets
only the columns ``h·d … (h+1)·d`` of W, so multiplying those columns by f is exactly the
head-scaling intervention (`heads.scale`) made permanent. The copy is an ordinary checkpoint with
a registry entry beside it (`entry.yaml`) and a manifest of what was planted (`plant.json`).

What a factor makes of a head (the ground truth a search should report):

* ``f < 0`` — *flipped* (harmful): the head now pushes against what it used to do. Undoing it
  needs the scale 1/f < 0, outside any clip range a modulation policy has ([0, 2] by default):
  a policy can at best remove the head (scale 0).
* ``f > 1`` — *amplified* (harmful): the head is too loud; the scale 1/f undoes it, inside [0, 2].
* ``f = 0`` — *removed*: the head is gone. No scale brings it back (0 · s = 0); a search should
  find nothing there (under zero-ablation its effect is exactly 0).
* ``0 < f < 1`` — *weakened*: the model under-uses a head it relies on, so enhancing it (scale
  1/f, inside [0, 2] for f ≥ 0.5) is a known, exact repair. This is the principled *helpful*
  plant: "helpful" has a ground truth only relative to a model where more of the head is known
  to be better, and weakening a used head builds exactly that model — the unplanted source is
  the planted model with that head scaled by 1/f.

"A head the model uses" is chosen from the model's own ablation (`measure_use`): the accuracy
lost when that head alone is zero-ablated, on toy-world questions of every level; a head is used
when the drop is at least `USE_THRESHOLD`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vseam_run.errors import VseamError

#: A head is "used" when zero-ablating it alone costs at least this much accuracy (absolute).
USE_THRESHOLD = 0.05

_HEAD = re.compile(r"^\s*L?(\d+)\s*\.\s*H?(\d+)\s*=\s*(.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class PlantedHead:
    """One planted head: its slice of the o_proj input is multiplied by `factor`."""

    layer: int
    head: int
    factor: float

    @property
    def kind(self) -> str:
        f = self.factor
        return "removed" if f == 0 else "flipped" if f < 0 else "amplified" if f > 1 else "weakened"

    @property
    def harmful(self) -> bool:
        return self.kind in ("flipped", "amplified")

    @property
    def expected_list(self) -> str | None:
        """Where a search should find it: harmful heads among the negative heads (removing them
        helps wrong answers), weakened heads among the positive heads; removed heads nowhere."""
        return "negative" if self.harmful else "positive" if self.kind == "weakened" else None

    @property
    def undo_scale(self) -> float | None:
        """The scale that restores the source model exactly (none for a removed head)."""
        return None if self.factor == 0 else 1.0 / self.factor

    def undoable_within(self, clip: tuple[float, float]) -> bool:
        u = self.undo_scale
        return u is not None and clip[0] <= u <= clip[1]

    @property
    def label(self) -> str:
        return f"L{self.layer}.H{self.head}×{self.factor:g}"

    def to_json(self) -> dict:
        return {**asdict(self), "label": self.label, "kind": self.kind, "expected_list": self.expected_list,
                "undo_scale": self.undo_scale}


def parse_head(text: str) -> PlantedHead:
    """`L.H=FACTOR` (also `L0.H3=-1`) → PlantedHead; a clear error otherwise."""
    m = _HEAD.match(text)
    if not m:
        raise VseamError(f"--head {text!r}: expected LAYER.HEAD=FACTOR, e.g. 0.3=-1 or L2.H5=3",
                         hint="layer and head are 0-based integers; FACTOR is a number (negative or > 1: harmful, 0: removed, "
                              "between 0 and 1: weakened)")
    layer, head, raw = int(m.group(1)), int(m.group(2)), m.group(3)
    try:
        factor = float(raw)
    except ValueError:
        raise VseamError(f"--head {text!r}: factor {raw!r} is not a number", hint="e.g. --head 0.3=-1 or --head 2.5=3") from None
    if not math.isfinite(factor):
        raise VseamError(f"--head {text!r}: factor {raw!r} is not finite", hint="give a finite number")
    if factor == 1:
        raise VseamError(f"--head {text!r}: a factor of 1 changes nothing", hint="negative or > 1: harmful; 0: removed; (0, 1): weakened")
    return PlantedHead(layer, head, factor)


def check_heads(heads: Sequence[PlantedHead], num_layers: int, num_heads: int, model: str) -> None:
    """Every head exists in the model, and none is planted twice."""
    if not heads:
        raise VseamError("nothing to plant", hint="give at least one --head LAYER.HEAD=FACTOR")
    seen: set[tuple[int, int]] = set()
    for h in heads:
        if not (0 <= h.layer < num_layers and 0 <= h.head < num_heads):
            raise VseamError(f"--head {h.layer}.{h.head}: model '{model}' has no such head",
                             hint=f"it has layers 0–{num_layers - 1} with heads 0–{num_heads - 1} each")
        if (h.layer, h.head) in seen:
            raise VseamError(f"--head {h.layer}.{h.head} is given twice", hint="plant each head once, with one factor")
        seen.add((h.layer, h.head))


def apply_plant(vlm, heads: Sequence[PlantedHead]) -> None:
    """Multiply each head's o_proj input columns by its factor, in place."""
    d = vlm.head_dim
    with torch.no_grad():
        for h in heads:
            w = vlm.o_proj(h.layer).weight  # [hidden, heads·head_dim]: input slice h = columns h·d … (h+1)·d
            w[:, h.head * d : (h.head + 1) * d] *= h.factor


# ---- which heads the model uses -----------------------------------------------------------------


@dataclass
class HeadUse:
    """Accuracy lost when each head alone is zero-ablated, on `n` questions."""

    base_accuracy: float
    drops: np.ndarray  # [L, H]
    n: int
    mode: str = "zero"
    by_level: dict[str, np.ndarray] = field(default_factory=dict)  # level → [L, H] drops on that level's questions

    def applies(self, heads: Sequence["PlantedHead"], level: str, threshold: float = USE_THRESHOLD) -> bool:
        """Does any of `heads` cost ≥ threshold at `level` (so planting it can show there)?"""
        m = self.by_level.get(level)
        return m is None or any(m[h.layer, h.head] >= threshold - 1e-12 for h in heads)

    def used(self, threshold: float = USE_THRESHOLD, layers: Sequence[int] | None = None) -> list[tuple[int, int, float]]:
        """(layer, head, drop) of every head with drop ≥ threshold, largest first (ties by position)."""
        out = [(l, h, float(self.drops[l, h])) for l in range(self.drops.shape[0]) for h in range(self.drops.shape[1])
               if self.drops[l, h] >= threshold - 1e-12 and (layers is None or l in layers)]
        return sorted(out, key=lambda t: (-t[2], t[0], t[1]))

    def to_json(self) -> dict:
        return {"base_accuracy": self.base_accuracy, "n": self.n, "mode": self.mode, "drops": self.drops.round(6).tolist(),
                "by_level": {k: v.round(6).tolist() for k, v in self.by_level.items()}}


def use_questions(vlm, images: int = 100, seed: int = 1000, cache_dir: Path | None = None) -> list:
    """Toy-world questions of every level for measuring head use (seeded apart from the bench's
    own splits, so the heads are not chosen on the questions they are evaluated on)."""
    from vseam_run.data import load_questions
    from vseam_run.data.toyworld import ToyWorldParams
    from vseam_run.scoring import Item

    loaded = load_questions("toyworld", None, None, toyworld=ToyWorldParams(seed=seed, images=images), cache_dir=cache_dir)
    qs = loaded.questions
    gold = vlm.answer_token_ids([q.answer for q in qs])
    return [Item(q.qid, q.load_image(), q.question, q.answer, g, q.category) for q, g in zip(qs, gold) if g is not None]


def measure_use(vlm, items: Sequence, heads: Sequence[tuple[int, int]] | None = None, *, batch_size: int = 32,
                mode: str = "zero", log: Callable[[str], None] | None = None) -> HeadUse:
    """Zero-ablate each head (or only `heads`) alone; NaN for heads not measured. Drops are
    also kept per level of the toy world (from the questions' categories)."""
    from vseam_run.data.toyworld.questions import CATEGORY_LEVEL
    from vseam_run.heads import ablate_heads_edits
    from vseam_run.scoring import ScoredSet

    scored = ScoredSet(vlm, items, batch_size, "head use")
    levels = np.array([CATEGORY_LEVEL.get(it.category, "") for it in items])
    names = [lv for lv in dict.fromkeys(levels) if lv]

    def accs(rows: list[dict]) -> dict[str, float]:
        ok = np.array([r["correct"] for r in rows], dtype=float)
        return {"": float(ok.mean()), **{lv: float(ok[levels == lv].mean()) for lv in names}}

    base = accs(scored.run())
    todo = heads if heads is not None else [(l, h) for l in range(vlm.num_layers) for h in range(vlm.num_heads)]
    drops = {k: np.full((vlm.num_layers, vlm.num_heads), np.nan) for k in base}
    for i, (l, h) in enumerate(todo):
        got = accs(scored.run(ablate_heads_edits([(l, h)], vlm.num_heads, mode)))
        for k in base:
            drops[k][l, h] = base[k] - got[k]
        if log and (i + 1) % vlm.num_heads == 0:
            log(f"  head use: {i + 1}/{len(todo)} heads ablated")
    return HeadUse(base[""], drops.pop(""), len(items), mode, drops)


# ---- writing the planted checkpoint ---------------------------------------------------------------


@dataclass
class Planted:
    """What `plant` wrote."""

    folder: Path
    entry: Path
    manifest: Path
    heads: list[PlantedHead]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - unresolvable paths are not the same folder
        return False


def check_out(out: Path, source_folder: Path | None) -> None:
    """The output folder is not the source checkpoint, and holds nothing but an earlier plant."""
    if source_folder is not None and (_same_folder(out, source_folder) or _is_inside(source_folder, out)):
        raise VseamError(f"--out {out}: that is the source checkpoint's folder (or holds it)",
                         hint="planting writes a copy; give a new folder")
    if out.exists() and not out.is_dir():
        raise VseamError(f"--out {out}: exists and is not a folder", hint="give a new folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "plant.json").is_file():
        raise VseamError(f"--out {out}: folder is not empty and holds no earlier plant", hint="give a new or empty folder")


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def plant(entry, vlm, heads: Sequence[PlantedHead], out: Path, *, use: HeadUse | None = None,
          threshold: float = USE_THRESHOLD, name: str | None = None) -> Planted:
    """Write a copy of `vlm`'s checkpoint with `heads` planted, plus `entry.yaml` and `plant.json`.

    `vlm` is loaded from `entry` and is modified in place (it then *is* the planted model).
    """
    import yaml

    from vseam_run.fingerprint import weights_stamp

    check_heads(heads, vlm.num_layers, vlm.num_heads, entry.name)
    source_folder = entry.resolved_path()
    out = Path(out).expanduser()
    check_out(out, source_folder)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.safetensors*"):
        stale.unlink()
    apply_plant(vlm, heads)
    if source_folder is not None:
        # The processor files, as they were (re-saving would write the wrapper's left padding into them).
        for p in source_folder.iterdir():
            if p.name.endswith((".safetensors", ".safetensors.index.json")) or p.name in ("train_report.json", "entry.yaml", "plant.json"):
                continue
            (shutil.copytree(p, out / p.name, dirs_exist_ok=True) if p.is_dir() else shutil.copy2(p, out / p.name))
    else:
        vlm.processor.save_pretrained(out)
    vlm.model.save_pretrained(out, safe_serialization=True)
    label = ", ".join(h.label for h in heads)
    data = entry.model_dump()
    data.update(name=name or f"{entry.name}-planted", path=".",
                description=f"{entry.name} with planted heads {label} (vseam zoo plant; see plant.json)")
    entry_path = out / "entry.yaml"
    entry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    manifest = {
        "source": {"name": entry.name, "entry_hash": entry.content_hash(), "weights": weights_stamp(source_folder)},
        "heads": [h.to_json() for h in heads],
        "use": None if use is None else {
            "threshold": threshold, **use.to_json(),
            "planted": {f"{h.layer}.{h.head}": float(use.drops[h.layer, h.head]) for h in heads},
        },
        "rule": "o_proj weight columns of each head's input slice multiplied by its factor (= heads.scale made permanent)",
    }
    man = out / "plant.json"
    man.write_text(json.dumps(manifest, indent=1))
    return Planted(out, entry_path, man, list(heads))


def read_manifest(folder: Path) -> dict | None:
    p = Path(folder) / "plant.json"
    return json.loads(p.read_text()) if p.is_file() else None
