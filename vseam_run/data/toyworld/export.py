"""Generating the toy evaluation set and writing it in GQA's formats.

The set is a pure function of `ToyWorldParams`: the same parameters give byte-identical
files. `ensure_toyworld` generates it once into a cache folder named by a hash of the
parameters (and of GENERATOR_VERSION, so a change to the generator never reuses a stale
set), writing into a temporary folder renamed at the end so an interrupted run never leaves
half a set behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vseam_run.data.base import Level
from vseam_run.data.toyworld.counterfactual import has_counterfactual
from vseam_run.data.toyworld.questions import (
    CATEGORIES,
    CATEGORY_LEVEL,
    NO,
    YES,
    Target,
    answer,
    propose,
    question_text,
    semantic_program,
    semantic_types,
)
from vseam_run.data.toyworld.render import render
from vseam_run.data.toyworld.world import Scene, sample_scene, scene_to_dict
from vseam_run.errors import VseamError

#: Bump when generation or rendering changes in meaning (2: one link per scene with halos, 9-14 px
#: shapes, visible textures on thin shapes; 3: chains of two links, link questions only where one
#: end is linked, owed turns so every category gets its share). The cache key also hashes this
#: package's source (generator_source_hash), so a change nobody remembered to bump never reuses a
#: stale set.
GENERATOR_VERSION = 3


@functools.lru_cache(maxsize=1)
def generator_source_hash() -> str:
    """Hash of the toy world's code (every module of this package)."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]

QUESTIONS_FILE = "questions.json"
SCENES_FILE = "scenes.json"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class ToyWorldParams:
    """Parameters of the built-in toy world's evaluation set."""

    seed: int = 0
    """Seeds scenes and questions; the set is identical for identical parameters."""
    images: int = 400
    """Number of scenes (images)."""
    image_size: int = 32
    """Side of the square images in pixels; shapes are 9–14 px at 32 and scale with it."""
    questions_per_image: int = 3
    """Questions asked per scene (each of a different category) before exact yes/no balancing."""

    def __post_init__(self) -> None:
        if self.images < 1 or self.questions_per_image < 1:
            raise VseamError("toyworld: images and questions_per_image must be at least 1")
        if self.image_size < 24:
            raise VseamError(
                f"toyworld: image_size {self.image_size} is too small", hint="use 24 pixels or more (default 32)"
            )

    def digest(self) -> str:
        """Short hash naming the cache folder of this parameter set."""
        blob = json.dumps({"generator": GENERATOR_VERSION, "source": generator_source_hash(), **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ToyQuestion:
    """One generated question with its scene, before it is written to disk."""

    qid: str
    image_id: str
    question: str
    answer: str
    level: Level
    category: str
    target: Target
    scene: Scene


@dataclass(frozen=True)
class ToySet:
    """A generated evaluation set: every scene (by image id) and the balanced questions."""

    scenes: dict[str, Scene]
    questions: list[ToyQuestion]


def generate(params: ToyWorldParams) -> ToySet:
    """The evaluation set in memory: scenes, then questions balanced exactly per category.

    Categories take turns across the questions of consecutive scenes so each gets the same
    share; each yes/no question asks for whichever answer its category has had fewer of. A turn
    that falls on a scene unable to ask that (a "no" about a link needs a scene with a link and
    a third object) is owed, and paid first by the next scene that can, so rare answers do not
    shrink their category. Any surplus left at the end is trimmed so yes and no counts are
    equal per category. Colour questions ask about the object whose colour has been the answer
    least often.
    """
    rng = random.Random(params.seed)
    scenes: dict[str, Scene] = {}
    questions: list[ToyQuestion] = []
    counts: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
    owed: list[str] = []
    turn = 0
    for i in range(params.images):
        image_id = f"toy{params.seed}-{i:05d}"
        scene = scenes[image_id] = sample_scene(rng, params.image_size)
        asked: set[str] = set()
        for k in range(params.questions_per_image):
            picked = None
            for c in owed:  # turns owed by earlier scenes first, oldest first
                if c not in asked and (t := _pick(scene, c, counts[c], rng)) is not None:
                    owed.remove(c)
                    picked = (c, t)
                    break
            if picked is None:
                category = CATEGORIES[turn % len(CATEGORIES)]
                turn += 1
                t = _pick(scene, category, counts[category], rng) if category not in asked else None
                if t is None:
                    owed.append(category)
                    continue
                picked = (category, t)
            category, t = picked
            asked.add(category)
            ans = answer(scene, t)
            assert ans is not None
            counts[category][ans] += 1
            qid = f"{image_id}-q{k}"
            questions.append(
                ToyQuestion(qid, image_id, question_text(scene, t), ans, CATEGORY_LEVEL[category], category, t, scene)
            )
    return ToySet(scenes, _balance(questions))


def _pick(scene: Scene, category: str, seen: Counter[str], rng: random.Random) -> Target | None:
    """A question of `category` for this scene with the answer the category has had fewer of
    (either answer while they are even; any colour question), or None if the scene cannot ask it.
    Only questions that can be edited: every exported question gets its counterfactual."""
    if category == "color":
        cands = _color_targets(scene)
        least = min(seen[answer(scene, t) or ""] for t in cands)
        return rng.choice([t for t in cands if seen[answer(scene, t) or ""] == least])
    if seen[YES] != seen[NO]:
        return propose(scene, category, YES if seen[YES] < seen[NO] else NO, rng, has_counterfactual)
    return propose(scene, category, None, rng, has_counterfactual)


def _color_targets(scene: Scene) -> list[Target]:
    return [Target("color", subject=o.oid) for o in scene.objects]


def _balance(questions: list[ToyQuestion]) -> list[ToyQuestion]:
    """Drop the latest surplus yes (or no) questions of each category so the counts match."""
    counts: dict[str, Counter[str]] = {}
    for q in questions:
        counts.setdefault(q.category, Counter())[q.answer] += 1
    keep_n = {c: min(n[YES], n[NO]) for c, n in counts.items() if c != "color"}
    kept: Counter[tuple[str, str]] = Counter()
    out = []
    for q in questions:
        if q.category in keep_n:
            if kept[q.category, q.answer] >= keep_n[q.category]:
                continue
            kept[q.category, q.answer] += 1
        out.append(q)
    return out


# --- GQA-format files -------------------------------------------------------------------------


def gqa_record(q: ToyQuestion) -> dict[str, Any]:
    """A question as a GQA record, plus `category` and the `target` the edits need."""
    involved = [o for o in q.scene.objects if o.oid in (q.target.subject, q.target.obj)]
    if q.target.type == "exist" and (present := q.scene.by_kind(q.target.value or "")):
        involved = [present]
    return {
        "question_id": q.qid,
        "imageId": q.image_id,
        "question": q.question,
        "answer": q.answer,
        "category": q.category,
        "semantic": semantic_program(q.scene, q.target),
        "types": semantic_types(q.target),
        "groups": {"global": q.category if q.level == "attribute" else None, "local": f"toy-{q.category}"},
        "involved_objects": [o.kind for o in involved],
        "object_positions": [{"x": o.x, "y": o.y, "w": o.w, "h": o.h} for o in involved],
        "target": q.target.to_dict(),
    }


def export_toyworld(params: ToyWorldParams, out_dir: Path) -> Path:
    """Write the set to `out_dir` (questions.json, scenes.json, images/*.png, params.json).

    Returns the questions JSON path; its images folder is `out_dir / "images"`.
    """
    toy = generate(params)
    images = out_dir / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    for image_id, scene in toy.scenes.items():
        render(scene).save(images / f"{image_id}.png")
    scenes = {image_id: scene_to_dict(s) for image_id, s in toy.scenes.items()}
    _write_json(out_dir / SCENES_FILE, scenes)
    _write_json(out_dir / "params.json", {"generator": GENERATOR_VERSION, **asdict(params)})
    path = out_dir / QUESTIONS_FILE
    _write_json(path, [gqa_record(q) for q in toy.questions])
    return path


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def ensure_toyworld(params: ToyWorldParams, cache_dir: Path) -> Path:
    """The folder holding this parameter set, generating it on first use."""
    final = cache_dir / f"toyworld-{params.digest()}"
    if (final / QUESTIONS_FILE).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toyworld-tmp-", dir=cache_dir))
    try:
        export_toyworld(params, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same set first; theirs is identical, keep it.
            if not (final / QUESTIONS_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
