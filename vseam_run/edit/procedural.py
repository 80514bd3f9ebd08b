"""Exact counterfactual edits for toy-world questions: edit the scene graph, re-render.

Where V-SEAM needs an LLM, SAM and diffusion inpainting to approximate "change exactly the
queried concept", the toy world can do it exactly: the queried object's kind, attribute or
relation is changed in the scene graph and the image re-rendered, so the edited answer is
known (computed by the world's own answer function) and the mask is precisely the set of
pixels that changed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from vseam_run.data.base import Box, Question
from vseam_run.data.toyworld.counterfactual import edit_scene
from vseam_run.data.toyworld.questions import Target, answer
from vseam_run.data.toyworld.render import render_array
from vseam_run.data.toyworld.world import Scene, scene_from_dict, scene_to_dict
from vseam_run.errors import VseamError

#: Bump when edits change, so cached edits are remade.
EDIT_VERSION = 1


@dataclass
class EditResult:
    """A counterfactual image for one question.

    `mask_path` is a PNG with 255 where the edited image differs from the original (the
    exact pixel difference, dilated by `mask_dilation` pixels, 0 here); `mask_bbox` is the
    box around it. `edited_answer` is what the edited scene implies and always differs
    from `original_answer`. `edited_scene` is the edited GQA-style scene graph.
    """

    qid: str
    image_path: Path
    mask_path: Path
    edit_text: str
    original_answer: str
    edited_answer: str
    mask_bbox: Box
    mask_dilation: int = 0
    edited_scene: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_path"], d["mask_path"] = self.image_path.name, self.mask_path.name
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path) -> EditResult:
        return cls(
            **{
                **d,
                "image_path": folder / d["image_path"],
                "mask_path": folder / d["mask_path"],
                "mask_bbox": Box(**d["mask_bbox"]),
            }
        )


def procedural_edit(q: Question, out_dir: Path) -> EditResult:
    """Make (or reuse) the exact counterfactual of a toy-world question in `out_dir`.

    Writes `<qid>.png` (edited image), `<qid>_mask.png` and `<qid>.json` (this result plus a
    fingerprint of the scene and target, so a cached edit is reused only for the same input).
    """
    scene, target = _scene_and_target(q)
    stem = _file_stem(q.qid)
    meta_path = out_dir / f"{stem}.json"
    fingerprint = _fingerprint(q, target)
    cached = _cached(meta_path, fingerprint)
    if cached is not None:
        return cached
    original = answer(scene, target)
    if original is None or original != q.answer:
        raise VseamError(
            f"question {q.qid}: its answer {q.answer!r} disagrees with its scene graph ({original!r})",
            hint="the toy set looks stale or hand-edited: delete it from the cache to regenerate it",
        )
    edit = edit_scene(scene, target, _rng(q.qid))
    if edit is None:
        raise VseamError(
            f"question {q.qid}: its scene has no room to flip the relation",
            hint="generated toy sets only ask editable questions; leave this question out",
        )
    before, after = _original_pixels(q, scene), render_array(edit.scene)
    changed = np.any(before != after, axis=2)
    result = EditResult(
        qid=q.qid,
        image_path=out_dir / f"{stem}.png",
        mask_path=out_dir / f"{stem}_mask.png",
        edit_text=edit.text,
        original_answer=original,
        edited_answer=_edited_answer(q, edit.scene, target, original),
        mask_bbox=_bbox(changed),
        edited_scene=scene_to_dict(edit.scene),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(after, "RGB").save(result.image_path)
    Image.fromarray(changed.astype(np.uint8) * 255, "L").save(result.mask_path)
    # The metadata goes last: its presence marks a complete edit for the cache.
    meta_path.write_text(json.dumps({"fingerprint": fingerprint, **result.to_json()}, indent=1))
    return result


def make_edits(questions: Iterable[Question], out_dir: Path, progress: bool = True) -> list[EditResult]:
    """Procedural edits for every question, in order, with a progress bar on stderr."""
    from vseam_run.progress import progress as bar

    qs = list(questions)
    if not progress:
        return [procedural_edit(q, out_dir) for q in qs]
    out: list[EditResult] = []
    with bar("procedural edits", len(qs)) as advance:
        for q in qs:
            out.append(procedural_edit(q, out_dir))
            advance(1)
    return out


# --- helpers ----------------------------------------------------------------------------------


def _scene_and_target(q: Question) -> tuple[Scene, Target]:
    scene, target = q.extra.get("scene"), q.extra.get("target")
    if not isinstance(scene, dict) or not isinstance(target, dict):
        raise VseamError(
            f"question {q.qid}: procedural edits need a toy-world scene graph (extra['scene'] and extra['target'])",
            hint="use data.source: toyworld, or an edit method that works on real images",
        )
    try:
        return scene_from_dict(scene), Target.from_dict(target)
    except (KeyError, StopIteration, TypeError, ValueError) as e:
        raise VseamError(f"question {q.qid}: malformed toy-world scene graph or target ({e!r})") from e


def _original_pixels(q: Question, scene: Scene) -> np.ndarray:
    """The scene rendered again, checked against the image on disk (a stale set must not pass)."""
    rendered = render_array(scene)
    on_disk = np.asarray(q.load_image())
    if on_disk.shape != rendered.shape or not np.array_equal(on_disk, rendered):
        raise VseamError(
            f"question {q.qid}: image {q.image_path} does not match its scene graph",
            hint="the toy set was made by another version: delete it from the cache to regenerate it",
        )
    return rendered


def _edited_answer(q: Question, edited: Scene, t: Target, original: str) -> str:
    new = answer(edited, t)
    if new is None or new == original:  # a bug in edit_scene, never bad input
        raise RuntimeError(f"question {q.qid}: edit left the answer at {new!r}")
    return new


def _bbox(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:  # an answer that changed with no pixel changing is a bug
        raise RuntimeError("edit changed no pixels")
    return Box(float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))


def _file_stem(qid: str) -> str:
    """A file-name-safe form of the id; a hash keeps two ids that sanitise alike apart."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", qid)
    return stem if stem == qid else f"{stem}-{hashlib.sha256(qid.encode()).hexdigest()[:8]}"


def _rng(qid: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(qid.encode()).digest()[:8], "big"))


def _fingerprint(q: Question, t: Target) -> str:
    blob = json.dumps(
        {"v": EDIT_VERSION, "qid": q.qid, "scene": q.extra["scene"], "target": t.to_dict()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached(meta_path: Path, fingerprint: str) -> EditResult | None:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.pop("fingerprint", None) != fingerprint:
        return None
    result = EditResult.from_json(meta, meta_path.parent)
    return result if result.image_path.is_file() and result.mask_path.is_file() else None
