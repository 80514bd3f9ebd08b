"""Question sources: GQA, POPE, COCO-QA and the built-in toy world, behind one function.

`load_questions` reads a source into `Question`s, filters them by level and category,
checks every image it keeps (once per distinct image) and applies the limit. The readers
themselves (gqa.py, pope.py, cocoqa.py) only parse; everything about selection lives here,
so all sources behave the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from vseam_run.data.base import Box, Level, Question
from vseam_run.data.cocoqa import read_cocoqa
from vseam_run.data.gqa import read_gqa
from vseam_run.data.pope import read_pope
from vseam_run.data.toyworld import ToyWorldParams, ensure_toyworld
from vseam_run.data.toyworld.export import IMAGES_DIR, QUESTIONS_FILE, SCENES_FILE
from vseam_run.errors import VseamError

Source = Literal["gqa", "pope", "cocoqa", "toyworld"]
OnMissingImage = Literal["error", "skip"]
SOURCES: tuple[str, ...] = ("gqa", "pope", "cocoqa", "toyworld")
#: File types read when data.path is a folder, per source.
#: (POPE's released files are JSON lines named *.json, so both endings are read.)
_SUFFIX: dict[str, tuple[str, ...]] = {"gqa": (".json",), "pope": (".jsonl", ".json"), "cocoqa": (".csv",)}

__all__ = [
    "Box",
    "LoadResult",
    "Question",
    "SOURCES",
    "ToyWorldParams",
    "check_question_files",
    "default_cache_dir",
    "load_questions",
    "single_answer_groups",
]


@dataclass
class LoadResult:
    """The questions selected, and those left out as (question id, reason)."""

    questions: list[Question]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def default_cache_dir() -> Path:
    """Where generated data goes when no cache_dir is given: $VSEAM_CACHE, else ./vseam_cache."""
    return Path(os.environ.get("VSEAM_CACHE", "vseam_cache"))


def load_questions(
    source: Source,
    path: Path | None,
    images: Path | None,
    *,
    level: Level | None = None,
    categories: list[str] | None = None,
    limit: int | None = None,
    on_missing_image: OnMissingImage = "error",
    toyworld: ToyWorldParams | None = None,
    cache_dir: Path | None = None,
    category_from: Literal["program", "file"] = "program",
) -> LoadResult:
    """Read questions from a source and select them.

    `path` is the questions file (or a folder of them: every *.json / *.jsonl / *.csv in
    it, sorted) and `images` the image folder; the toy world takes neither and is generated
    from `toyworld` into `cache_dir` on first use. Selection keeps file order: level, then
    categories, then the image check, then the first `limit` questions. A missing or
    corrupt image raises a VseamError, or with `on_missing_image="skip"` is recorded in
    `skipped`; so are questions with an empty answer. Raises VseamError when nothing is left.
    `category_from="file"` takes GQA categories from the file names (the original release's
    Animal.json, Color.json, ...) instead of deriving them from the semantic program.
    """
    if source not in SOURCES:
        raise VseamError(f"unknown data source {source!r}", hint=f"use one of: {', '.join(SOURCES)}")
    if on_missing_image not in ("error", "skip"):
        raise VseamError(f"on_missing_image must be 'error' or 'skip', got {on_missing_image!r}")
    if limit is not None and limit < 1:
        raise VseamError(f"data.limit must be at least 1, got {limit}")
    if source == "toyworld":
        questions, skipped = _read_toyworld(path, images, level, toyworld, cache_dir or default_cache_dir())
    else:
        questions, skipped = _read_files(source, path, images, level, category_from == "file")
    _check_unique(questions)
    return _select(questions, skipped, level, categories, limit, on_missing_image, describe=str(path or source))


def check_question_files(
    source: Source,
    path: Path | None,
    images: Path | None,
    *,
    level: Level | None = None,
    categories: list[str] | None = None,
    category_from: Literal["program", "file"] = "program",
    on_missing_image: OnMissingImage = "error",
    first_images: int = 5,
) -> int:
    """Parse a dataset's question files as `load_questions` would, without opening an image,
    and return how many questions its filters keep. Raises the VseamError the load would
    raise: a file that does not parse, whose question type cannot be told, or that has
    nothing matching the filters (categories taken as `category_from` says, as the load takes
    them). The first `first_images` kept questions' images must exist (an image folder holding
    none of them would skip or stop on every question). Used before a run starts (checks.py)."""
    if source == "toyworld":
        raise ValueError("the toy world is generated, not read: there is no file to check")
    questions, skipped = _read_files(source, path, images, level, category_from == "file")
    _check_unique(questions)
    if not questions and skipped:
        raise VseamError(f"{path}: cannot tell the type of any question (first: {skipped[0][0]}: {skipped[0][1]})",
                         hint="set data.level to say which level the questions are")
    wanted = set(categories) if categories else None
    kept = [q for q in questions if (level is None or q.level == level) and (wanted is None or q.category in wanted)]
    if not kept:
        raise VseamError(_nothing_matches(questions, level, categories, str(path)), hint=_available(questions))
    _check_first_images(kept[:first_images], images, on_missing_image)
    return len(kept)


def _check_first_images(questions: list[Question], images: Path | None, on_missing_image: OnMissingImage) -> None:
    """Existence only (no image is opened): none of the first questions' images, or (with
    on_missing_image: error) the first missing one, is a problem found before the run starts."""
    missing = [q for q in questions if not q.image_path.is_file()]
    if not missing:
        return
    if len(missing) == len(questions):
        raise VseamError(
            f"none of the first {len(questions)} questions' images is in {images} (first: {missing[0].image_path.name} "
            f"for question {missing[0].qid})",
            hint="point data.images at the folder holding the images named by the questions' imageId",
        )
    if on_missing_image == "error":
        raise VseamError(
            f"image of question {missing[0].qid} not found: {missing[0].image_path}",
            hint="add it, or set on_missing_image: skip to skip questions whose image is missing",
        )


def single_answer_groups(questions: list[Question]) -> dict[str, str]:
    """Categories (level/category) of two or more questions whose questions all have one answer,
    with that answer. The released object- and relation-level GQA files answer "Yes" to every
    question: accuracy on such a split says little, and the run should say so."""
    answers: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for q in questions:
        key = f"{q.level}/{q.category}"
        answers.setdefault(key, set()).add(q.answer)
        counts[key] = counts.get(key, 0) + 1
    return {k: next(iter(a)) for k, a in sorted(answers.items()) if len(a) == 1 and counts[k] > 1}


# --- reading ----------------------------------------------------------------------------------


def _read_files(
    source: Source, path: Path | None, images: Path | None, level: Level | None, category_from_file: bool = False
) -> tuple[list[Question], list[tuple[str, str]]]:
    if path is None:
        raise VseamError(f"data.path is required for source {source}", hint="point it at the questions file")
    if images is None:
        raise VseamError(f"data.images is required for source {source}", hint="point it at the image folder")
    if not images.is_dir():
        raise VseamError(f"image folder not found: {images}", hint="check data.images")
    questions: list[Question] = []
    skipped: list[tuple[str, str]] = []
    for file in _data_files(source, Path(path)):
        if source == "gqa":
            parsed = read_gqa(file, images, level=level, category_from_file=category_from_file)
            questions += parsed.questions
            skipped += parsed.skipped
        elif source == "pope":
            questions += read_pope(file, images)
        else:
            questions += read_cocoqa(file, images, level=level)
    return questions, skipped


def _data_files(source: Source, path: Path) -> list[Path]:
    if not path.is_dir():
        if not path.is_file():
            raise VseamError(f"data file not found: {path}", hint="check data.path")
        return [path]
    # Subfolders too: the original release keeps one folder per level (object/Animal.json, ...).
    files = sorted(p for p in path.rglob("*") if p.suffix in _SUFFIX[source] and p.is_file())
    if not files:
        raise VseamError(f"no {' / '.join(_SUFFIX[source])} files in {path}", hint=f"point data.path at a {source} questions file")
    return files


def _read_toyworld(
    path: Path | None, images: Path | None, level: Level | None, params: ToyWorldParams | None, cache_dir: Path
) -> tuple[list[Question], list[tuple[str, str]]]:
    """Generate (once) and read back the toy set through the GQA reader, adding scene graphs.

    Each question gets `extra["scene"]` (its image's GQA-style scene graph) and
    `extra["target"]` (what it asks about) so procedural edits can re-render it.
    """
    if path is not None or images is not None:
        raise VseamError(
            "data.path and data.images are not used with source toyworld (it is generated)",
            hint="remove them, or export the toy set and load it with source: gqa",
        )
    root = ensure_toyworld(params or ToyWorldParams(), cache_dir)
    parsed = read_gqa(root / QUESTIONS_FILE, root / IMAGES_DIR, level=level, extra_keys=("target",))
    scenes = json.loads((root / SCENES_FILE).read_text())
    for q in parsed.questions:
        q.extra["scene"] = scenes[q.image_id]
        q.extra["source"] = "toyworld"
    return parsed.questions, parsed.skipped


def _check_unique(questions: list[Question]) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.qid in seen:
            raise VseamError(
                f"question id {q.qid} occurs twice",
                hint="question ids must be unique: results and edits are stored by id",
            )
        seen.add(q.qid)


# --- selection --------------------------------------------------------------------------------


def _select(
    questions: list[Question],
    skipped: list[tuple[str, str]],
    level: Level | None,
    categories: list[str] | None,
    limit: int | None,
    on_missing_image: OnMissingImage,
    describe: str,
) -> LoadResult:
    wanted = set(categories) if categories else None
    candidates = [q for q in questions if (level is None or q.level == level) and (wanted is None or q.category in wanted)]
    if not candidates:
        raise VseamError(_nothing_matches(questions, level, categories, describe), hint=_available(questions))
    checker = _ImageChecker()
    kept: list[Question] = []
    for q in candidates:
        if not q.answer:
            skipped.append((q.qid, "empty answer"))
            continue
        problem = checker(q.image_path)
        if problem is not None:
            if on_missing_image == "error":
                raise _image_error(q, problem)
            skipped.append((q.qid, f"{problem}: {q.image_path}"))
            continue
        kept.append(q)
        if limit is not None and len(kept) >= limit:
            break
    if not kept:
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise VseamError(f"{describe}: all {len(candidates)} selected questions were skipped{first}", hint="check data.images")
    return LoadResult(kept, skipped)


def _nothing_matches(questions: list[Question], level: Level | None, categories: list[str] | None, describe: str) -> str:
    if not questions:
        return f"{describe}: no questions found"
    filters = [f"level {level}"] * (level is not None) + [f"categories {categories}"] * bool(categories)
    return f"{describe}: no question matches {' and '.join(filters)}"


def _available(questions: list[Question]) -> str:
    pairs = sorted({(q.level, q.category) for q in questions})
    return "available (level/category): " + ", ".join(f"{lv}/{c}" for lv, c in pairs) if pairs else "is it the right file?"


class _ImageChecker:
    """Opens, verifies and decodes each distinct image once; returns None when it is fine, else the problem."""

    def __init__(self) -> None:
        self.seen: dict[Path, str | None] = {}

    def __call__(self, path: Path) -> str | None:
        if path not in self.seen:
            self.seen[path] = self._check(path)
        return self.seen[path]

    @staticmethod
    def _check(path: Path) -> str | None:
        if not path.is_file():
            return "missing image"
        try:
            # verify() checks the container (e.g. PNG checksums) but decodes nothing, so a
            # truncated JPEG passes it; load() decodes every pixel and fails on those.
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                im.load()
        except Exception as e:  # PIL raises many types for damaged files
            return f"corrupt image ({type(e).__name__}: {e})"
        return None


def _image_error(q: Question, problem: str) -> VseamError:
    if problem == "missing image":
        return VseamError(
            f"question {q.qid}: image not found: {q.image_path}",
            hint="check data.images (the image folder), or set data.on_missing_image: skip to leave such questions out",
        )
    return VseamError(
        f"question {q.qid}: {problem}: {q.image_path}",
        hint="replace the file, or set data.on_missing_image: skip to leave such questions out",
    )
