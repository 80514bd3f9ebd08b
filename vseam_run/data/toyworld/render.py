"""Rendering a toy scene to pixels: a pure, deterministic function of the scene graph.

Because nothing random happens here, re-rendering an edited scene changes exactly the
pixels the edit concerns, which is what makes procedural edits exact counterfactuals.
Shapes are drawn as boolean masks (PIL draws each mask once per kind and size; numpy
composes), so one 32 px image takes well under a millisecond.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vseam_run.data.toyworld.world import MATERIALS, Scene, ToyObject

BACKGROUND = (235, 235, 235)
LINE_COLOR = (0, 0, 0)
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 160, 40),
    "blue": (30, 70, 225),
    "yellow": (225, 185, 0),
}


@lru_cache(maxsize=None)
def shape_masks(kind: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(shape, footprint) boolean masks of a kind drawn in a w×h box.

    The footprint is the shape with holes filled (a ring's footprint is a disc); link lines
    stop at the footprint so they touch the outline instead of showing inside a ring.
    """
    shape = _draw(kind, w, h)
    footprint = _draw("circle", w, h) if kind == "ring" else shape
    shape.setflags(write=False)
    footprint.setflags(write=False)
    return shape, footprint


def _draw(kind: str, w: int, h: int) -> np.ndarray:
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    r, b = w - 1, h - 1
    if kind == "circle":
        d.ellipse((0, 0, r, b), fill=255)
    elif kind == "ring":
        # A band about a quarter of the size wide: thick enough to show its texture.
        t = max(2, round(min(w, h) / 4))
        d.ellipse((0, 0, r, b), fill=255)
        d.ellipse((t, t, r - t, b - t), fill=0)
    elif kind == "square":
        # Inset by 1 px so a square does not look bigger than the round shapes in the same box.
        d.rectangle((1, 1, r - 1, b - 1), fill=255)
    elif kind == "triangle":
        d.polygon([(0, b), (r / 2, 0), (r, b)], fill=255)
    elif kind == "diamond":
        d.polygon([(r / 2, 0), (r, b / 2), (r / 2, b), (0, b / 2)], fill=255)
    elif kind == "cross":
        t = max(2, round(min(w, h) / 3))
        x0, y0 = (w - t) // 2, (h - t) // 2
        d.rectangle((x0, 0, x0 + t - 1, b), fill=255)
        d.rectangle((0, y0, r, y0 + t - 1), fill=255)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return np.asarray(im) > 0


@lru_cache(maxsize=None)
def painted_mask(kind: str, material: str, w: int, h: int) -> np.ndarray:
    """Pixels of the box painted in the object's colour: the outline plus the texture.

    The outline is painted so the silhouette (the kind) stays readable whatever the material,
    except on shapes too thin to show a texture inside it (a small ring or cross is nearly all
    outline: at 9 px a ring looked the same in every material): those wear the texture on the
    whole shape. Either way every two materials differ in at least MIN_TEXTURE_PIXELS pixels.
    The texture is box-relative so a moved object looks the same.
    """
    shape, _ = shape_masks(kind, w, h)
    inner = _erode(shape)
    outline = shape & ~inner
    masks = {m: outline | (shape & _pattern(m, w, h)) for m in MATERIALS}
    if _min_difference(masks) < MIN_TEXTURE_PIXELS:
        masks = {m: shape & _pattern(m, w, h) for m in MATERIALS}
    if material not in masks:
        raise ValueError(f"unknown material {material!r}")
    out = masks[material]
    out.setflags(write=False)
    return out


#: Fewest pixels by which any two materials of one shape must differ (see painted_mask).
MIN_TEXTURE_PIXELS = 8


def _pattern(material: str, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    if material == "solid":
        return np.ones((h, w), bool)
    if material == "striped":
        return yy % 2 == 0
    if material == "dotted":
        return (yy % 2 == 0) & (xx % 2 == 0)
    raise ValueError(f"unknown material {material!r}")


def _min_difference(masks: dict[str, np.ndarray]) -> int:
    ms = list(masks.values())
    return min(int((a != b).sum()) for i, a in enumerate(ms) for b in ms[i + 1 :])


def _erode(m: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; pixels on the box border count as edge pixels."""
    p = np.pad(m, 1, constant_values=False)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _line_mask(scene: Scene, a: ToyObject, b: ToyObject) -> np.ndarray:
    im = Image.new("L", (scene.width, scene.height), 0)
    ImageDraw.Draw(im).line([a.center, b.center], fill=255, width=1)
    m = np.asarray(im) > 0
    for o in (a, b):
        _, foot = shape_masks(o.kind, o.w, o.h)
        m[o.y : o.y + o.h, o.x : o.x + o.w] &= ~foot
    return m


@lru_cache(maxsize=None)
def halo_mask(kind: str, w: int, h: int) -> np.ndarray:
    """The 1-px ring just outside an object's footprint, in its box grown by 1 px each side
    ((h + 2) × (w + 2)): the mark a linked object wears, visible in every patch it covers."""
    _, foot = shape_masks(kind, w, h)
    p = np.pad(foot, 1, constant_values=False)
    grown = p.copy()
    grown[1:, :] |= p[:-1, :]
    grown[:-1, :] |= p[1:, :]
    grown[:, 1:] |= p[:, :-1]
    grown[:, :-1] |= p[:, 1:]
    out = grown & ~p
    out.setflags(write=False)
    return out


def _paint_halo(img: np.ndarray, o: ToyObject) -> None:
    """Paint o's halo, clipped to the image (an object may touch the border)."""
    ring = halo_mask(o.kind, o.w, o.h)
    y0, x0 = o.y - 1, o.x - 1
    ys, xs = slice(max(y0, 0), min(y0 + o.h + 2, img.shape[0])), slice(max(x0, 0), min(x0 + o.w + 2, img.shape[1]))
    sub = ring[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    img[ys, xs][sub] = LINE_COLOR


def render_array(scene: Scene) -> np.ndarray:
    """The scene as an H×W×3 uint8 array."""
    img = np.empty((scene.height, scene.width, 3), np.uint8)
    img[:] = BACKGROUND
    for pair in sorted(sorted(p) for p in scene.links):
        img[_line_mask(scene, scene.obj(pair[0]), scene.obj(pair[1]))] = LINE_COLOR
    for oid in sorted(scene.linked_objects()):
        _paint_halo(img, scene.obj(oid))
    for o in scene.objects:
        region = img[o.y : o.y + o.h, o.x : o.x + o.w]
        _, foot = shape_masks(o.kind, o.w, o.h)
        # Clear the footprint first: texture gaps show background, never a line underneath.
        region[foot] = BACKGROUND
        region[painted_mask(o.kind, o.material, o.w, o.h)] = RGB[o.color]
    return img


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB PIL image."""
    return Image.fromarray(render_array(scene), "RGB")
