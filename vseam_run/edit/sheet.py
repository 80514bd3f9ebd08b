"""The edit contact sheet: original | mask | edited, sampled across every category, with the
model's answer and the gold answer's probability on each side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from vseam_run.report import _new_figure, _save


@dataclass(frozen=True)
class SheetRow:
    """One edit on the sheet; `*_pred` / `*_prob` are the model's answer and P(gold) (None: not scored)."""

    qid: str
    category: str
    question: str
    original: Path
    mask: Path
    edited: Path
    edit_text: str
    original_gold: str
    edited_gold: str
    original_pred: str | None
    original_prob: float | None
    edited_pred: str | None
    edited_prob: float | None
    status: str


def sample_across(rows: Sequence[SheetRow], n: int) -> list[SheetRow]:
    """Up to `n` rows taken round-robin over the categories (sorted), so every category shows up
    before any shows twice — not every k-th edit, which follows the file's order."""
    by_cat: dict[str, list[SheetRow]] = {}
    for r in rows:
        by_cat.setdefault(r.category, []).append(r)
    out: list[SheetRow] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_cat.values()):
        for cat in sorted(by_cat):
            if depth < len(by_cat[cat]) and len(out) < n:
                out.append(by_cat[cat][depth])
        depth += 1
    return out


def _answer(gold: str, pred: str | None, prob: float | None) -> str:
    if pred is None or prob is None:
        return f"gold {gold!r} (not scored)"
    return f"model {pred.strip()!r}, P({gold!r}) = {prob:.2f}"


def edit_sheet(rows: Sequence[SheetRow], path: Path, *, title: str) -> Path:
    """Draw the sheet (one row per edit) to `path`."""
    n = max(len(rows), 1)
    fig = _new_figure(3 * 2.3, 2.3 * n + 0.5)
    axes = fig.subplots(n, 3, squeeze=False)
    for r, row in enumerate(rows):
        panels = (
            (row.original, f"original\n{_answer(row.original_gold, row.original_pred, row.original_prob)}"),
            (row.mask, f"mask · {row.edit_text}\n{row.status}"),
            (row.edited, f"edited\n{_answer(row.edited_gold, row.edited_pred, row.edited_prob)}"),
        )
        for c, (img, caption) in enumerate(panels):
            ax = axes[r][c]
            with Image.open(img) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=6)
        axes[r][0].set_title(f"[{row.category}] {row.question}", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
