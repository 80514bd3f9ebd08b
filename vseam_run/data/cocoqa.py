"""COCO-QA CSV files → Questions.

The CSV has a leading unnamed index column, then image id, question, answer; header names
vary between exports, so columns are taken by position. One file holds one question type,
named by the `_` part of its name that is a question type (`cocoqa_color.csv`, `color_coco_qa.csv` → color), which gives the category and the
level. COCO file names embed the 12-digit image id (`COCO_train2014_000000023004.jpg`), and
the split in the name is not in the CSV, so the image folder is indexed once by the number
at the end of each file name.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from vseam_run.data.base import Level, Question
from vseam_run.errors import VseamError

CATEGORY_LEVEL: dict[str, Level] = {
    "color": "attribute",
    "count": "object",
    "number": "object",
    "object": "object",
    "location": "relation",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def read_cocoqa(path: Path, images: Path, *, level: Level | None = None) -> list[Question]:
    """Questions of one COCO-QA CSV, in file order.

    The level comes from the file's category; `level` is used only for a file whose name
    names no known category.
    """
    if not path.is_file():
        raise VseamError(f"data file not found: {path}", hint="check data.path")
    category = file_category(path)
    file_level = CATEGORY_LEVEL.get(category, level)
    if file_level is None:
        raise VseamError(
            f"{path}: cannot tell the question type from the file name (category {category!r})",
            hint=f"name it cocoqa_<{'|'.join(CATEGORY_LEVEL)}>.csv, or set data.level",
        )
    index = ImageIndex(images)
    out = []
    for lineno, row in _rows(path):
        out.append(_question(path, lineno, row, category, file_level, index))
    return out


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), 1) if any(c.strip() for c in row)]
    except (csv.Error, UnicodeDecodeError) as e:
        raise VseamError(f"{path}: not a readable CSV file: {e}", hint="expected index, image id, question, answer") from e
    # The header (",train_image_id_count,...") is recognised by its image-id cell not being a number.
    if rows and len(rows[0][1]) >= 2 and not rows[0][1][1].strip().isdigit():
        rows = rows[1:]
    return rows


def _question(path: Path, lineno: int, row: list[str], category: str, level: Level, index: ImageIndex) -> Question:
    if len(row) < 4:
        raise VseamError(
            f"{path}:{lineno}: expected 4 columns (index, image id, question, answer), got {len(row)}",
            hint="COCO-QA CSVs start with an unnamed index column",
        )
    idx, image_id, question, answer = (c.strip() for c in row[:4])
    if not image_id.isdigit():
        raise VseamError(f"{path}:{lineno}: image id {image_id!r} is not a number", hint="the second column is the COCO image id")
    question = question if question.endswith("?") else question + "?"
    return Question(
        qid=f"{path.stem}-{idx or lineno}",
        image_id=str(int(image_id)),
        image_path=index.find(int(image_id)),
        question=question,
        answer=answer.lower(),
        level=level,
        category=category,
        extra={"source_line": lineno},
    )


def file_category(path: Path) -> str:
    """`cocoqa_color.csv` and the release's `color_coco_qa.csv` both → color: the first `_` part
    that names a known question type, else the last part."""
    parts = path.stem.lower().split("_")
    return next((p for p in parts if p in CATEGORY_LEVEL), parts[-1])


class ImageIndex:
    """COCO images of a folder by the number their file name ends with (one directory scan)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_id: dict[int, Path] | None = None

    def find(self, image_id: int) -> Path:
        """The image's path; for a missing image, a placeholder naming the pattern searched for."""
        if self._by_id is None:
            self._by_id = self._scan()
        return self._by_id.get(image_id, self.folder / f"*{image_id:012d}.jpg")

    def _scan(self) -> dict[int, Path]:
        found: dict[int, Path] = {}
        if not self.folder.is_dir():
            return found
        for p in sorted(self.folder.iterdir()):
            m = _TRAILING_NUMBER.search(p.stem)
            if m and p.suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(int(m.group(1)), p)
        return found
