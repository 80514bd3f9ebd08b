"""Deterministic search / val / test splits made by image, so no image falls in two splits."""

from __future__ import annotations

import random
from typing import Sequence

from vseam_run.data.base import Question

SPLITS = ("search", "val", "test")


def split_by_image(questions: Sequence[Question], fractions: dict[str, float], seed: int) -> dict[str, list[Question]]:
    """Shuffle the distinct image ids with `seed` and cut them by the fractions (search, val, test).

    Each split with a non-zero fraction gets at least one image when there are enough images.
    """
    images = sorted({q.image_id for q in questions})
    random.Random(seed).shuffle(images)
    n = len(images)
    counts = [round(fractions[s] * n) for s in SPLITS]
    for i, s in enumerate(SPLITS):  # no empty split that was asked for
        if fractions[s] > 0 and counts[i] == 0 and n >= len(SPLITS):
            counts[i] = 1
    counts[0] = n - sum(counts[1:])  # rounding slack goes to the search split
    assign: dict[str, str] = {}
    start = 0
    for s, c in zip(SPLITS, counts):
        for img in images[start : start + c]:
            assign[img] = s
        start += c
    out: dict[str, list[Question]] = {s: [] for s in SPLITS}
    for q in questions:
        out[assign[q.image_id]].append(q)
    return out
