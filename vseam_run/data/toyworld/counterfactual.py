"""Counterfactual scenes: change exactly the concept a question asks about.

This is the scene-graph half of procedural edits (the file, mask and cache half lives in
`vseam_run.edit.procedural`). It lives with the world because the exporter uses it too:
a question is only asked when its counterfactual exists, so every exported question can
be edited.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

from vseam_run.data.toyworld.questions import NO, YES, Target, answer
from vseam_run.data.toyworld.world import (
    COLORS,
    KINDS,
    LINK,
    MATERIALS,
    SPATIAL_CONVERSE,
    Scene,
    ToyObject,
    layout_ok,
    spatial_holds,
    spatial_margin,
)


@dataclass(frozen=True)
class SceneEdit:
    """An edited scene and the edit in words ("red → green", "circle → square")."""

    scene: Scene
    text: str


def edit_scene(scene: Scene, t: Target, rng: random.Random) -> SceneEdit | None:
    """The scene with the concept `t` asks about changed so its answer differs, or None.

    Object: a yes becomes no by turning the object into a kind absent from the scene; a no
    becomes yes by turning some object into the asked kind. Colour: another colour.
    Material: yes → another material, no → the asked material. Link: the link (line and
    halos) is removed, or drawn between the two objects; other links stay. Spatial: objects
    move (see `_edit_spatial`); only this can fail, when the scene has no room for the flipped
    relation.
    """
    if t.type == "exist":
        return _edit_kind(scene, t.value or "", rng)
    if t.type == "color":
        a = scene.obj(t.subject or "")
        new = rng.choice([c for c in COLORS if c != a.color])
        return SceneEdit(scene.with_object(replace(a, color=new)), f"{a.color} → {new}")
    if t.type == "material":
        a = scene.obj(t.subject or "")
        new = rng.choice([m for m in MATERIALS if m != a.material]) if a.material == t.value else (t.value or "")
        return SceneEdit(scene.with_object(replace(a, material=new)), f"{a.material} → {new}")
    if t.type == "link":
        linked = scene.linked(t.subject or "", t.obj or "")
        text = f"{LINK} → not {LINK}" if linked else f"not {LINK} → {LINK}"
        return SceneEdit(scene.with_link(t.subject or "", t.obj or "", not linked), text)
    return _edit_spatial(scene, t)


def has_counterfactual(scene: Scene, t: Target) -> bool:
    """Whether `edit_scene` succeeds for this question (only spatial ones can fail)."""
    return t.type != "spatial" or _edit_spatial(scene, t) is not None


def _edit_kind(scene: Scene, kind: str, rng: random.Random) -> SceneEdit:
    present = scene.by_kind(kind)
    if present is not None:
        new = rng.choice([k for k in KINDS if scene.by_kind(k) is None])
        return SceneEdit(scene.with_object(replace(present, kind=new)), f"{kind} → {new}")
    victim = rng.choice(scene.objects)
    return SceneEdit(scene.with_object(replace(victim, kind=kind)), f"{victim.kind} → {kind}")


def _edit_spatial(scene: Scene, t: Target) -> SceneEdit | None:
    """Flip a spatial relation by moving as little as the layout allows.

    First one object moves (the subject, else the other one) to the valid spot nearest its
    mirror image across its partner, other objects staying put. On a 32 px image two shapes
    rarely leave room for that, so otherwise the two objects swap places (centre to centre),
    which flips every relation between them and leaves the rest of the scene as it was.
    Every choice is by distance with ties broken by position, so the edit is deterministic.
    """
    now = answer(scene, t)
    current = (t.value if now == YES else SPATIAL_CONVERSE[t.value or ""]) or ""
    goal = NO if now == YES else YES
    text = f"{current} → {SPATIAL_CONVERSE[current]}"
    a, b = t.subject or "", t.obj or ""

    def flipped(s: Scene) -> bool:
        return answer(s, t) == goal and layout_ok(s.objects, s.width)

    # Moving the subject, it must end up `flipped_rel` of the object; moving the object,
    # the subject's relation to it flips exactly when it ends up `current` of the subject.
    flipped_rel = SPATIAL_CONVERSE[current]
    for mover, partner, rel in ((a, b, flipped_rel), (b, a, current)):
        moved = _move(scene, mover, partner, rel, flipped)
        if moved is not None:
            return SceneEdit(moved, text)
    swapped = _swap(scene, a, b)
    return SceneEdit(swapped, text) if flipped(swapped) else None


def _move(scene: Scene, mover: str, partner: str, goal: str, ok: Callable[[Scene], bool]) -> Scene | None:
    """`scene` with `mover` moved to end up `goal` of `partner`, or None if there is no room.

    Spots are tried nearest first to the mover's mirror image across the partner; the cheap
    relation test prunes the grid before the full layout check.
    """
    a, b = scene.obj(mover), scene.obj(partner)
    tx, ty = _mirror(a, b, goal)
    margin = spatial_margin(scene.width)
    spots = [
        (x, y)
        for y in range(scene.height - a.h + 1)
        for x in range(scene.width - a.w + 1)
        if spatial_holds(ToyObject(a.oid, a.kind, a.color, a.material, x, y, a.w, a.h), b, goal, margin)
    ]
    spots.sort(key=lambda p: ((p[0] - tx) ** 2 + (p[1] - ty) ** 2, p[1], p[0]))
    for x, y in spots:
        moved = scene.with_object(replace(a, x=x, y=y))
        if ok(moved):
            return moved
    return None


def _mirror(a: ToyObject, b: ToyObject, relation: str) -> tuple[int, int]:
    """Where `a` lands mirrored across `b` on the relation's axis (keeping the gap)."""
    if relation in ("to the left of", "to the right of"):
        return (2 * b.x + b.w - a.x - a.w, a.y)
    return (a.x, 2 * b.y + b.h - a.y - a.h)


def _swap(scene: Scene, a_id: str, b_id: str) -> Scene:
    """The two objects exchange places: each takes the other's centre, kept inside the image."""
    a, b = scene.obj(a_id), scene.obj(b_id)

    def at_center_of(o: ToyObject, other: ToyObject) -> ToyObject:
        x = round(other.x + (other.w - o.w) / 2)
        y = round(other.y + (other.h - o.h) / 2)
        return replace(o, x=min(max(x, 0), scene.width - o.w), y=min(max(y, 0), scene.height - o.h))

    return scene.with_object(at_center_of(a, b)).with_object(at_center_of(b, a))
