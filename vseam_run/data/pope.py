"""POPE question files (JSON lines: question_id, image, text, label) → Questions.

POPE asks "Is there a <object> in the image?" about COCO images; it is object-level, and
its sampling strategy (random / popular / adversarial), the last `_` part of the file
name, is the category. Question ids restart at 1 in every file, so the id is prefixed with
the file stem to stay unique when several files are loaded together.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vseam_run.data.base import Question
from vseam_run.errors import VseamError

REQUIRED = ("question_id", "image", "text", "label")
_OBJECT = re.compile(r"is there an? (.+?) in the im", re.IGNORECASE)


def read_pope(path: Path, images: Path) -> list[Question]:
    """Questions of one POPE file, in file order."""
    if not path.is_file():
        raise VseamError(f"data file not found: {path}", hint="check data.path")
    category = path.stem.split("_")[-1]
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                out.append(_question(path, lineno, _parse_line(path, lineno, line), category, images))
    return out


def _parse_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise VseamError(
            f"{path}:{lineno}: not valid JSON: {e.msg}",
            hint="POPE files hold one JSON object per line: question_id, image, text, label",
        ) from e
    if not isinstance(rec, dict):
        raise VseamError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise VseamError(
            f"{path}:{lineno}: missing field(s) {', '.join(missing)}",
            hint="POPE records need question_id, image, text and label",
        )
    return rec


def _question(path: Path, lineno: int, rec: dict[str, Any], category: str, images: Path) -> Question:
    image = str(rec["image"])
    m = _OBJECT.search(str(rec["text"]))
    return Question(
        qid=f"{path.stem}-{rec['question_id']}",
        image_id=Path(image).stem,
        image_path=images / image,
        question=str(rec["text"]).strip(),
        answer=str(rec["label"]).strip().lower(),
        level="object",
        category=category,
        objects=[m.group(1).strip()] if m else [],
        extra={"source_line": lineno},
    )
