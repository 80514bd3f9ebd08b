"""The toy world's scene graphs: objects, their boxes, and the relations derived from them.

A scene is the single source of truth: the image is rendered from it (render.py) and every
answer is computed from it (questions.py), so an edit made on the scene graph and re-rendered
is an exact counterfactual. Scenes convert to and from GQA's scene-graph JSON format so they
can be stored next to GQA-format questions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

# --- vocabulary -------------------------------------------------------------------------------

#: The six shapes, grouped into three object categories (the toy analogue of GQA's
#: animal / indoor / vehicle): two kinds per category so "Is there a <kind>?" questions of a
#: category can be answered either way in most scenes.
KIND_CATEGORY: dict[str, str] = {
    "circle": "round",
    "ring": "round",
    "square": "boxy",
    "cross": "boxy",
    "triangle": "pointy",
    "diamond": "pointy",
}
KINDS: tuple[str, ...] = tuple(KIND_CATEGORY)
OBJECT_CATEGORIES: tuple[str, ...] = ("round", "boxy", "pointy")

#: Well-separated hues; the RGB values live in render.py.
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: Materials are fill textures: full fill, horizontal stripes, a grid of dots.
MATERIALS: tuple[str, ...] = ("solid", "striped", "dotted")

LEFT, RIGHT, ABOVE, BELOW = "to the left of", "to the right of", "above", "below"
#: Spatial relations in GQA's wording, each with its converse.
SPATIAL_CONVERSE: dict[str, str] = {LEFT: RIGHT, RIGHT: LEFT, ABOVE: BELOW, BELOW: ABOVE}
SPATIAL_RELATIONS: tuple[str, ...] = tuple(SPATIAL_CONVERSE)
#: The non-spatial relation (symmetric): a line joins the two objects and each of them wears a
#: dark halo, so an object shows *at the object* that it takes part in a link (a 1-px line alone
#: was never learned by a 2-layer vision tower: which objects it joins is a fact about pixels far
#: from both). A three-object scene can hold two links, a chain A–B–C: then A and C both wear
#: halos without being linked to each other, and only the line tells.
LINK = "linked to"


def spatial_margin(image_size: int) -> int:
    """Smallest gap (pixels) between two boxes for a spatial relation to count as clear."""
    return max(2, image_size // 16)


# --- scene graph ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyObject:
    """One shape in a scene. The box (x, y, w, h) is in image pixels, like GQA's."""

    oid: str
    kind: str
    color: str
    material: str
    x: int
    y: int
    w: int
    h: int

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + (self.w - 1) / 2, self.y + (self.h - 1) / 2)


@dataclass(frozen=True)
class Scene:
    """A toy image's scene graph. `links` holds unordered object-id pairs joined by a line
    (sampled scenes hold up to two; see sample_scene)."""

    width: int
    height: int
    objects: tuple[ToyObject, ...]
    links: frozenset[frozenset[str]] = field(default_factory=frozenset)

    def obj(self, oid: str) -> ToyObject:
        for o in self.objects:
            if o.oid == oid:
                return o
        raise KeyError(oid)

    def by_kind(self, kind: str) -> ToyObject | None:
        """The object of that kind, if any (kinds are distinct within a scene)."""
        return next((o for o in self.objects if o.kind == kind), None)

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.links

    def with_object(self, new: ToyObject) -> Scene:
        """A copy with the object of the same id replaced."""
        objs = tuple(new if o.oid == new.oid else o for o in self.objects)
        return replace(self, objects=objs)

    def with_link(self, a: str, b: str, present: bool) -> Scene:
        """A copy where a and b are (present) or are not linked; other links stay."""
        pair = frozenset((a, b))
        links = self.links | {pair} if present else self.links - {pair}
        return replace(self, links=frozenset(links))

    def linked_objects(self) -> frozenset[str]:
        """Ids of the objects that take part in a link (these wear the halo)."""
        return frozenset(oid for pair in self.links for oid in pair)


def spatial_holds(a: ToyObject, b: ToyObject, relation: str, margin: int) -> bool:
    """Whether `a <relation> b` holds with at least `margin` pixels between the boxes."""
    if relation == LEFT:
        return a.x + a.w + margin <= b.x
    if relation == RIGHT:
        return b.x + b.w + margin <= a.x
    if relation == ABOVE:
        return a.y + a.h + margin <= b.y
    if relation == BELOW:
        return b.y + b.h + margin <= a.y
    raise ValueError(f"not a spatial relation: {relation!r}")


def spatial_relations(a: ToyObject, b: ToyObject, margin: int) -> list[str]:
    """Every spatial relation that clearly holds from a to b."""
    return [r for r in SPATIAL_RELATIONS if spatial_holds(a, b, r, margin)]


# --- layout validity --------------------------------------------------------------------------


def _segment_hits_box(p: tuple[float, float], q: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    """Liang-Barsky: does segment p→q meet the closed box (x0, y0, x1, y1)?"""
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for d, lo, hi, s in ((dx, box[0], box[2], p[0]), (dy, box[1], box[3], p[1])):
        if d == 0:
            if s < lo or s > hi:
                return False
            continue
        ta, tb = (lo - s) / d, (hi - s) / d
        if ta > tb:
            ta, tb = tb, ta
        t0, t1 = max(t0, ta), min(t1, tb)
        if t0 > t1:
            return False
    return True


def layout_ok(objects: Iterable[ToyObject], size: int) -> bool:
    """Whether a layout keeps every question about it unambiguous.

    Each box lies inside the image; each pair is separated on at least one axis by more than
    the relation margin (so at least one spatial question about it has a definite answer and
    shapes never touch);
    and the segment between any two centres stays 1 px clear of every third box, so a link
    line, present or added by an edit, never runs under another object.
    """
    objs = list(objects)
    # One pixel more than the relation margin: every pair has a clear relation with room to
    # spare, and a link line between neighbours is at least a few pixels long.
    margin = spatial_margin(size) + 1
    for o in objs:
        if o.x < 0 or o.y < 0 or o.x + o.w > size or o.y + o.h > size:
            return False
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            if not spatial_relations(a, b, margin):
                return False
            for c in objs:
                if c is a or c is b:
                    continue
                box = (c.x - 1.5, c.y - 1.5, c.x + c.w + 0.5, c.y + c.h + 0.5)
                if _segment_hits_box(a.center, b.center, box):
                    return False
    return True


# --- sampling ---------------------------------------------------------------------------------


def object_size_range(image_size: int) -> tuple[int, int]:
    """Side lengths of shapes: 9–14 px on a 32 px image, scaled for other sizes. At 9 px a
    circle, a ring and a diamond differ in few pixels, which keeps object questions from being
    answered perfectly; at 8 px a dotted ring and a dotted cross differed in one pixel."""
    return max(6, round(9 * image_size / 32)), max(8, round(14 * image_size / 32))


def sample_scene(rng: random.Random, image_size: int, link_prob: float = 0.5) -> Scene:
    """A random valid scene with 2 or 3 objects of distinct kinds; with probability `link_prob`
    one link between two of them, and in a three-object scene with a link, with probability
    `link_prob` a second one (a chain A–B–C).

    Objects are placed one at a time, each by rejection against those already placed (far
    likelier to succeed than drawing whole layouts). A layout that runs out of room starts
    over; after a few failed three-object layouts the scene gets two, which always fit
    quickly, so this never loops for long.
    """
    n = rng.choice((2, 3))
    kinds = rng.sample(KINDS, n)
    attempt = 0
    while True:
        objs = _place(rng, kinds, image_size)
        if objs is not None:
            return Scene(image_size, image_size, tuple(objs), _sample_links(rng, objs, link_prob))
        attempt += 1
        if attempt >= 5:
            kinds = kinds[:2]


def _place(rng: random.Random, kinds: list[str], size: int) -> list[ToyObject] | None:
    objs: list[ToyObject] = []
    for i, kind in enumerate(kinds):
        for _ in range(30):
            cand = _sample_object(rng, f"o{i}", kind, size)
            if layout_ok([*objs, cand], size):
                objs.append(cand)
                break
        else:
            return None
    return objs


def _sample_object(rng: random.Random, oid: str, kind: str, size: int) -> ToyObject:
    lo, hi = object_size_range(size)
    s = rng.randint(lo, hi)
    x, y = rng.randint(0, size - s), rng.randint(0, size - s)
    return ToyObject(oid, kind, rng.choice(COLORS), rng.choice(MATERIALS), x, y, s, s)


def _sample_links(rng: random.Random, objs: list[ToyObject], p: float) -> frozenset[frozenset[str]]:
    """With probability p a link between a pair drawn uniformly; with three objects, with
    probability p again a second link between another pair."""
    pairs = [frozenset((a.oid, b.oid)) for i, a in enumerate(objs) for b in objs[i + 1 :]]
    if rng.random() >= p:
        return frozenset()
    first = rng.choice(pairs)
    if len(pairs) < 3 or rng.random() >= p:
        return frozenset({first})
    return frozenset({first, rng.choice([q for q in pairs if q != first])})


# --- GQA scene-graph JSON ---------------------------------------------------------------------


def scene_to_dict(scene: Scene) -> dict[str, Any]:
    """The scene in GQA's scene-graph format (one image's entry).

    Attributes are [color, material]; relations list every clear spatial relation and the
    links, both ways, so the file reads like a GQA scene graph.
    """
    margin = spatial_margin(scene.width)
    objects: dict[str, Any] = {}
    for o in scene.objects:
        relations = []
        for other in scene.objects:
            if other.oid == o.oid:
                continue
            relations += [{"object": other.oid, "name": r} for r in spatial_relations(o, other, margin)]
            if scene.linked(o.oid, other.oid):
                relations.append({"object": other.oid, "name": LINK})
        objects[o.oid] = {
            "name": o.kind,
            "x": o.x,
            "y": o.y,
            "w": o.w,
            "h": o.h,
            "attributes": [o.color, o.material],
            "relations": relations,
        }
    return {"width": scene.width, "height": scene.height, "objects": objects}


def scene_from_dict(d: dict[str, Any]) -> Scene:
    """Inverse of scene_to_dict. Spatial relations are re-derived from the boxes, not read."""
    objs = []
    links: set[frozenset[str]] = set()
    for oid, o in d["objects"].items():
        attrs = o.get("attributes", [])
        color = next(a for a in attrs if a in COLORS)
        material = next(a for a in attrs if a in MATERIALS)
        objs.append(ToyObject(oid, o["name"], color, material, int(o["x"]), int(o["y"]), int(o["w"]), int(o["h"])))
        links |= {frozenset((oid, r["object"])) for r in o.get("relations", []) if r["name"] == LINK}
    return Scene(int(d["width"]), int(d["height"]), tuple(objs), frozenset(links))
