"""GQA question files → Questions.

GQA ships questions as a dict keyed by question id (the official balanced splits) or, in
many derived subsets, as a list of records carrying `question_id`; both are read. The level
comes from `types.semantic`, the category from the record (the toy world writes one) or is
derived from the semantic program, as V-SEAM groups GQA: animal / indoor / vehicle objects,
color / material attributes, spatial / action relations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from vseam_run.data.base import Box, Level, Question
from vseam_run.errors import VseamError

SEMANTIC_LEVEL: dict[str, Level] = {"obj": "object", "attr": "attribute", "rel": "relation"}
CATEGORY_LEVELS: tuple[str, ...] = ("object", "attribute", "relation")

#: Object names → V-SEAM's GQA object categories (plural forms are matched too).
OBJECT_CATEGORY: dict[str, str] = {
    **dict.fromkeys(
        "dog cat bird cow horse sheep elephant zebra giraffe bear animal puppy kitten lamb calf "
        "duck goose chicken pigeon seagull parrot owl eagle swan monkey deer goat pig donkey "
        "antelope panda lion tiger fox rabbit squirrel mouse fish".split(),
        "animal",
    ),
    **dict.fromkeys(
        "chair table couch sofa bed desk lamp shelf shelves cabinet drawer dresser bookshelf "
        "refrigerator fridge oven microwave stove sink toilet television tv monitor computer laptop "
        "keyboard clock vase pillow curtain rug carpet mirror bathtub stool bench cupboard "
        "nightstand armchair ottoman fireplace counter".split(),
        "indoor",
    ),
    **dict.fromkeys(
        "car bus truck bike bicycle motorcycle motorbike train airplane plane jet boat ship van taxi "
        "scooter tractor trailer cart wagon carriage helicopter suv jeep ambulance tram skateboard "
        "vehicle".split(),
        "vehicle",
    ),
}

#: Relation phrases that are spatial; every other relation counts as an action.
SPATIAL_PHRASES: frozenset[str] = frozenset(
    "to the left of|to the right of|left of|right of|on the left of|on the right of|above|below|"
    "on|on top of|under|underneath|beneath|in front of|behind|next to|near|beside|by|in|inside|"
    "inside of|outside|outside of|at|around|between|over|on the side of|on the front of|"
    "on the back of|at the top of|at the bottom of|close to|far from|against|along|across|"
    "in the middle of|in the center of|surrounding|among|beyond|opposite".split("|")
)
ATTRIBUTE_TYPES: tuple[str, ...] = (
    "color", "material", "shape", "size", "pattern", "texture", "activity", "pose", "length",
    "height", "weight", "age", "state", "cleanliness", "hposition", "vposition",
)  # fmt: skip

_ARG_NAME = re.compile(r"^\s*(.*?)\s*\((?:[^()]*)\)\s*$")


@dataclass
class GqaParse:
    """The records of a GQA file that became questions, and those that could not (id, reason)."""

    questions: list[Question] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning a missing file or bad JSON into a VseamError naming it."""
    if not path.is_file():
        raise VseamError(f"data file not found: {path}", hint="check data.path")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        if _looks_like_pope(path):
            raise VseamError(
                f"{path}: looks like POPE (JSON lines of question_id / image / text / label), not a GQA questions file",
                hint="evaluate it as its own dataset with source: pope, or move it out of the GQA folder",
            ) from None
        raise VseamError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}",
            hint="fix or re-download the file",
        ) from e
    except UnicodeDecodeError as e:
        raise VseamError(f"{path}: not UTF-8 text: {e}", hint="is this the right file?") from e


def _looks_like_pope(path: Path) -> bool:
    """Whether a file's first line is a POPE record (a folder of GQA files may also hold POPE's
    JSON lines, named .json as POPE releases them)."""
    try:
        with path.open(encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(first, dict) and {"image", "text", "label"} <= set(first)


#: The original release's per-category files (Animal.json, Color.json, ...) and their levels.
FILE_CATEGORY_LEVEL: dict[str, Level] = {
    "animal": "object", "indoor": "object", "vehicle": "object",
    "color": "attribute", "material": "attribute",
    "action": "relation", "spatial": "relation",
}  # fmt: skip


def file_category(path: Path) -> str:
    """The category a file's name gives: `Animal.json` → animal, `gqa_attribute_color.json` → color.

    The last `_`/`-` part that names a known category wins, else the last part."""
    parts = [p for p in re.split(r"[_\-\s]+", path.stem.lower()) if p]
    known = [p for p in parts if p in FILE_CATEGORY_LEVEL]
    return known[-1] if known else (parts[-1] if parts else path.stem.lower())


def read_gqa(
    path: Path,
    images: Path,
    *,
    level: Level | None = None,
    extra_keys: Iterable[str] = (),
    category_from_file: bool = False,
) -> GqaParse:
    """Questions of a GQA file, in file order.

    Records without a usable `types.semantic` are taken to be of `level` (when given);
    filtering by level is left to the caller. `extra_keys` are record fields copied into
    `Question.extra` as they are (the toy world keeps its `target` this way). With
    `category_from_file`, the category is the file's (see `file_category`), and so is the level
    of records without `types.semantic` (else the parent folder's name, when it is a level).
    """
    out = GqaParse()
    resolve = _ImageResolver(images)
    keys = tuple(extra_keys)
    forced = file_category(path) if category_from_file else None
    fallback_level = level
    if forced is not None:
        folder = path.parent.name.lower()
        fallback_level = FILE_CATEGORY_LEVEL.get(forced) or (folder if folder in CATEGORY_LEVELS else None) or level  # type: ignore[assignment]
    for qid, rec in _records(path, read_json(path)):
        rec_level = SEMANTIC_LEVEL.get(str((rec.get("types") or {}).get("semantic"))) or fallback_level
        if rec_level is None:
            semantic = (rec.get("types") or {}).get("semantic")
            out.skipped.append((qid, f"types.semantic {semantic!r} is not obj, attr or rel; set data.level to use it"))
            continue
        q = _question(path, qid, rec, rec_level, resolve, keys)
        if forced is not None:
            q.category = forced
        out.questions.append(q)
    return out


def _records(path: Path, data: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(data, dict):
        items: Iterable[tuple[Any, Any]] = data.items()
    elif isinstance(data, list):
        items = ((rec.get("question_id") if isinstance(rec, dict) else None, rec) for rec in data)
    else:
        raise VseamError(
            f"{path}: expected a list of question records or a dict keyed by question id, got {type(data).__name__}",
            hint="point data.path at a GQA questions JSON file",
        )
    for i, (qid, rec) in enumerate(items):
        if not isinstance(rec, dict):
            raise VseamError(f"{path}: item {qid if qid is not None else i} is not a JSON object")
        if qid is None:
            raise VseamError(
                f"{path}: record {i} has no question_id",
                hint="list-form GQA files need a question_id in every record (or use the dict form)",
            )
        yield str(qid), rec


def _question(
    path: Path, qid: str, rec: dict[str, Any], level: Level, resolve: _ImageResolver, keys: tuple[str, ...]
) -> Question:
    for name in ("question", "imageId"):
        if not rec.get(name):
            raise VseamError(f"{path}: question {qid}: missing field {name!r}", hint="is this a GQA questions file?")
    image_id = str(rec["imageId"])
    objects = [str(o) for o in (rec.get("involved_objects") or rec.get("relevant_objects") or [])]
    extra = {k: rec.get(k) for k in ("semantic", "types", "groups") if k in rec}
    extra.update({k: rec[k] for k in keys if k in rec})
    return Question(
        qid=qid,
        image_id=image_id,
        image_path=resolve(image_id),
        question=str(rec["question"]).strip(),
        answer=str(rec.get("answer") or "").strip().lower(),
        level=level,
        category=str(rec.get("category") or category_of(rec, level, objects)),
        objects=objects,
        boxes=_boxes(path, qid, rec.get("object_positions") or []),
        extra=extra,
    )


def _boxes(path: Path, qid: str, positions: list[Any]) -> list[Box]:
    try:
        return [Box(float(p["x"]), float(p["y"]), float(p["w"]), float(p["h"])) for p in positions]
    except (KeyError, TypeError, ValueError) as e:
        raise VseamError(
            f"{path}: question {qid}: object_positions must be a list of {{x, y, w, h}} boxes ({e!r})"
        ) from e


class _ImageResolver:
    """`images/{imageId}.jpg`, else `.png`; each image is looked up once."""

    def __init__(self, images: Path) -> None:
        self.images = images
        self.cache: dict[str, Path] = {}

    def __call__(self, image_id: str) -> Path:
        if image_id not in self.cache:
            jpg = self.images / f"{image_id}.jpg"
            png = self.images / f"{image_id}.png"
            self.cache[image_id] = png if not jpg.exists() and png.exists() else jpg
        return self.cache[image_id]


# --- categories -------------------------------------------------------------------------------


def category_of(rec: dict[str, Any], level: Level, objects: list[str]) -> str:
    """V-SEAM's category of a GQA record at a level (see the module docstring)."""
    program = rec.get("semantic") or []
    if level == "attribute":
        return _attribute_category(rec, program)
    if level == "relation":
        rel = relation_of(program)
        return "spatial" if rel is not None and rel in SPATIAL_PHRASES else "action"
    return object_category(_selected_name(program) or (objects[0] if objects else ""))


def object_category(name: str) -> str:
    """animal / indoor / vehicle from the built-in table, else other."""
    name = name.strip().lower()
    for cand in (name, name.removesuffix("s"), name.removesuffix("es"), name.split(" ")[-1]):
        if cand in OBJECT_CATEGORY:
            return OBJECT_CATEGORY[cand]
    return "other"


def _attribute_category(rec: dict[str, Any], program: list[dict[str, Any]]) -> str:
    """groups.global when set (color, material, ...), else the attribute type the program asks about.

    Verify questions ("Is the plate made of plastic?") have no global group; their program
    says `verify material: plastic`, so the last attribute operation decides.
    """
    group = (rec.get("groups") or {}).get("global")
    if group:
        return str(group)
    for op in reversed(program):
        operation = str(op.get("operation", ""))
        words = operation.split()
        if operation == "query" and op.get("argument") in ATTRIBUTE_TYPES:
            return str(op["argument"])
        if len(words) == 2 and words[0] in ("verify", "choose", "filter") and words[1] in ATTRIBUTE_TYPES:
            return words[1]
    return "other"


def relation_of(program: list[dict[str, Any]]) -> str | None:
    """The relation phrase of the first relate / verify rel / choose rel step, e.g. "to the left of"."""
    for op in program:
        if op.get("operation") in ("relate", "verify rel", "choose rel"):
            parts = str(op.get("argument", "")).split(",")
            if len(parts) >= 3:
                # "subject,relation,o (id)"; choose rel gives "a|b": the first alternative decides.
                return parts[1].split("|")[0].strip().lower()
    return None


def _selected_name(program: list[dict[str, Any]]) -> str | None:
    for op in program:
        if op.get("operation") == "select":
            m = _ARG_NAME.match(str(op.get("argument", "")))
            return m.group(1) if m else str(op.get("argument", "")).strip()
    return None
