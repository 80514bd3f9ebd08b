"""Questions about toy scenes: what is asked (a Target), how it is worded, how it is answered.

Every answer is a single word and is computed from the scene graph by `answer`, the world's
one answer function; the question generator, the exporter and the procedural edits all use
it, so an edited scene's answer is never guessed.

Templates (single-word answers; level / category):
  object    / round|boxy|pointy  "Is there a <kind>?"                      yes|no
  attribute / color              "What color is the <kind>?"               <color>
  attribute / material           "Is the <kind> <material>?"               yes|no
  relation  / spatial            "Is the <kind> <spatial> the <kind>?"     yes|no
  relation  / link               "Is the <kind> linked to the <kind>?"     yes|no
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

from PIL import Image

from vseam_run.data.base import Level
from vseam_run.data.toyworld.world import (
    COLORS,
    KIND_CATEGORY,
    KINDS,
    LINK,
    MATERIALS,
    OBJECT_CATEGORIES,
    SPATIAL_CONVERSE,
    SPATIAL_RELATIONS,
    Scene,
    sample_scene,
    spatial_holds,
    spatial_margin,
)

TargetType = Literal["exist", "color", "material", "spatial", "link"]

#: Every category, in the order the exporter cycles through them.
CATEGORIES: tuple[str, ...] = (*OBJECT_CATEGORIES, "color", "material", "spatial", "link")
CATEGORY_LEVEL: dict[str, Level] = {
    **{c: "object" for c in OBJECT_CATEGORIES},
    "color": "attribute",
    "material": "attribute",
    "spatial": "relation",
    "link": "relation",
}
_LEVELS: tuple[Level, ...] = ("object", "attribute", "relation")
YES, NO = "yes", "no"


@dataclass(frozen=True)
class Target:
    """What a question asks about, by object id, so it survives edits of kinds and positions.

    exist:    value = the kind asked for (no object id: the answer may be "no").
    color:    subject = the object.
    material: subject = the object, value = the material asked about.
    spatial:  subject <value> obj, value = a spatial relation.
    link:     subject linked to obj.
    """

    type: TargetType
    subject: str | None = None
    obj: str | None = None
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(d["type"], d.get("subject"), d.get("obj"), d.get("value"))


def answer(scene: Scene, t: Target) -> str | None:
    """The answer the scene implies, or None when it is not clear-cut (never asked)."""
    if t.type == "exist":
        return YES if scene.by_kind(t.value or "") else NO
    a = scene.obj(t.subject or "")
    if t.type == "color":
        return a.color
    if t.type == "material":
        return YES if a.material == t.value else NO
    b = scene.obj(t.obj or "")
    if t.type == "link":
        return YES if scene.linked(a.oid, b.oid) else NO
    margin = spatial_margin(scene.width)
    if spatial_holds(a, b, t.value or "", margin):
        return YES
    if spatial_holds(a, b, SPATIAL_CONVERSE[t.value or ""], margin):
        return NO
    return None


def category_of(scene: Scene, t: Target) -> str:
    if t.type == "exist":
        return KIND_CATEGORY[t.value or ""]
    return t.type


def question_text(scene: Scene, t: Target) -> str:
    """The question in words (kinds are unique in a scene, so "the <kind>" is unambiguous)."""
    if t.type == "exist":
        return f"Is there a {t.value}?"
    a = scene.obj(t.subject or "").kind
    if t.type == "color":
        return f"What color is the {a}?"
    if t.type == "material":
        return f"Is the {a} {t.value}?"
    b = scene.obj(t.obj or "").kind
    rel = LINK if t.type == "link" else t.value
    return f"Is the {a} {rel} the {b}?"


# --- choosing what to ask ---------------------------------------------------------------------


def propose(
    scene: Scene,
    category: str,
    want: str | None,
    rng: random.Random,
    accept: Callable[[Scene, Target], bool] | None = None,
) -> Target | None:
    """A target of `category` whose answer is `want` (any answer if None), or None.

    Candidates are listed in a fixed order and drawn with `rng`, so the choice is
    deterministic per seed; `accept` can veto candidates (checked lazily, in draw order).
    """
    cands = [t for t in candidates(scene, category) if want is None or answer(scene, t) == want]
    rng.shuffle(cands)
    return next((t for t in cands if accept is None or accept(scene, t)), None)


def candidates(scene: Scene, category: str) -> list[Target]:
    """Every question of `category` with a clear answer in this scene, in a fixed order."""
    objs = scene.objects
    if category in OBJECT_CATEGORIES:
        return [Target("exist", value=k) for k in KINDS if KIND_CATEGORY[k] == category]
    if category == "color":
        return [Target("color", subject=o.oid) for o in objs]
    if category == "material":
        return [Target("material", subject=o.oid, value=m) for o in objs for m in MATERIALS]
    pairs = [(a.oid, b.oid) for a in objs for b in objs if a.oid != b.oid]
    if category == "link":
        # Asked only where at least one of the two is linked (wears a halo): in a picture without
        # a link, or about two objects without one, "no" is told by the missing halos alone.
        linked = scene.linked_objects()
        return [Target("link", subject=a, obj=b) for a, b in pairs if a in linked or b in linked]
    if category == "spatial":
        ts = [Target("spatial", subject=a, obj=b, value=r) for a, b in pairs for r in SPATIAL_RELATIONS]
        return [t for t in ts if answer(scene, t) is not None]
    raise ValueError(f"unknown category {category!r}")


# --- GQA-style semantic program ---------------------------------------------------------------


def semantic_program(scene: Scene, t: Target) -> list[dict[str, Any]]:
    """The question's program in GQA's `semantic` style (select → verify/query/exist)."""

    def select(oid: str | None, name: str) -> dict[str, Any]:
        return {"operation": "select", "dependencies": [], "argument": f"{name} ({oid or '-'})"}

    if t.type == "exist":
        present = scene.by_kind(t.value or "")
        return [select(present.oid if present else None, t.value or ""), _op("exist", "?")]
    a = scene.obj(t.subject or "")
    if t.type == "color":
        return [select(a.oid, a.kind), _op("query", "color")]
    if t.type == "material":
        return [select(a.oid, a.kind), _op("verify material", t.value or "")]
    b = scene.obj(t.obj or "")
    rel = LINK if t.type == "link" else t.value
    return [select(a.oid, a.kind), _op("verify rel", f"{b.kind},{rel},o ({b.oid})")]


def _op(operation: str, argument: str) -> dict[str, Any]:
    return {"operation": operation, "dependencies": [0], "argument": argument}


def semantic_types(t: Target) -> dict[str, str]:
    """GQA's `types` field for a target."""
    semantic = {"exist": "obj", "color": "attr", "material": "attr"}.get(t.type, "rel")
    detailed = {"exist": "exist", "color": "directWhich", "material": "verifyAttr"}.get(t.type, "relVerify")
    structural = "query" if t.type == "color" else "verify"
    return {"semantic": semantic, "detailed": detailed, "structural": structural}


# --- vocabulary -------------------------------------------------------------------------------

_TEMPLATE_WORDS = ("is", "there", "a", "what", "color", "the", "linked", "to", "left", "right", "of", "above", "below")
_WORD_RE = re.compile(r"[a-z]+|\?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens with "?" as its own token: how vocabulary() splits text."""
    return _WORD_RE.findall(text.lower())


def vocabulary() -> list[str]:
    """Every token that can appear in a toy question or answer (see `words`), sorted."""
    vocab = {*_TEMPLATE_WORDS, *KINDS, *COLORS, *MATERIALS, YES, NO, "?"}
    for rel in (*SPATIAL_RELATIONS, LINK):
        vocab.update(words(rel))
    return sorted(vocab)


def answer_vocabulary() -> list[str]:
    """Every possible answer word: yes, no and the colours."""
    return [YES, NO, *COLORS]


def _level_share(category: str) -> float:
    """A category's chance when levels are drawn uniformly, then a category of the level."""
    return 1 / len(_LEVELS) / sum(CATEGORY_LEVEL[c] == CATEGORY_LEVEL[category] for c in CATEGORIES)


# --- fast in-memory examples for training -----------------------------------------------------


@dataclass
class ToyExample:
    """One training item: an image with one question about it (and the scene behind both)."""

    image: Image.Image
    question: str
    answer: str
    level: Level
    category: str
    scene: Scene
    target: Target


def sample_examples(rng: random.Random | int, n: int, image_size: int = 32,
                    boost: dict[str, float] | None = None) -> list[ToyExample]:
    """`n` fresh examples, one new scene each, never touching disk.

    Levels are drawn uniformly, then a category of the level (so the three object categories
    do not make the object level three sevenths of the data), and yes/no answers with
    probability ½ each (balanced in expectation; the exported evaluation set is balanced
    exactly). `boost` multiplies the chance of the named categories (e.g. {"material": 2.0}: twice
    as many material questions as under the plain draw). Rendering is cached per shape, so this
    costs a fraction of a millisecond per example.
    """
    from vseam_run.data.toyworld.render import render

    rng = random.Random(rng) if isinstance(rng, int) else rng
    out: list[ToyExample] = []
    for _ in range(n):
        if boost:
            category = rng.choices(CATEGORIES, weights=[_level_share(c) * boost.get(c, 1.0) for c in CATEGORIES])[0]
        else:
            level = rng.choice(_LEVELS)
            category = rng.choice([c for c in CATEGORIES if CATEGORY_LEVEL[c] == level])
        want = None if category == "color" else rng.choice((YES, NO))
        # Redraw the scene (not the category or answer) until it can answer `want`, so the
        # category and answer mix stays exactly as drawn.
        t = None
        while t is None:
            scene = sample_scene(rng, image_size)
            t = propose(scene, category, want, rng)
        ans = answer(scene, t)
        assert ans is not None
        out.append(ToyExample(render(scene), question_text(scene, t), ans, CATEGORY_LEVEL[category], category, scene, t))
    return out
