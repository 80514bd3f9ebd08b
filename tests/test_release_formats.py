"""The original release's annotation files load as they are: per-category GQA files (the category is
the file name), dict- and list-form, relevant_/involved_objects, subfolders per level; POPE as
JSON lines named .json; COCO-QA CSVs named color_coco_qa.csv; single-answer splits are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vseam_run.data import load_questions, single_answer_groups
from vseam_run.data.gqa import file_category

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, Path]:
    """A release-like folder: object/Animal.json (list, relevant_objects), attribute/Color.json
    (dict keyed by question id), relation/Spatial.json; and an image for every image id."""
    root, images = tmp_path / "vseam_gqa", tmp_path / "images"
    for level, src, name in (("object", "gqa_object_animal.json", "Animal.json"),
                             ("attribute", "gqa_attribute_color.json", "Color.json"),
                             ("relation", "gqa_relation_spatial.json", "Spatial.json")):  # fmt: skip
        (root / level).mkdir(parents=True)
        shutil.copy(FIXTURES / src, root / level / name)
    images.mkdir()
    for f in root.rglob("*.json"):
        data = json.loads(f.read_text())
        for rec in data.values() if isinstance(data, dict) else data:
            Image.new("RGB", (8, 8)).save(images / f"{rec['imageId']}.jpg")
    return root, images


def test_category_from_file_name(release: tuple[Path, Path]) -> None:
    root, images = release
    got = load_questions("gqa", root, images, category_from="file").questions
    by_cat = {c: [q for q in got if q.category == c] for c in ("animal", "color", "spatial")}
    assert [len(v) for v in by_cat.values()] == [12, 12, 12]  # every question kept, none "other"
    assert {q.level for q in by_cat["animal"]} == {"object"} and {q.level for q in by_cat["spatial"]} == {"relation"}
    assert by_cat["animal"][1].objects == ["cow", "fence"]  # relevant_objects
    assert by_cat["spatial"][0].objects == ["statue", "woman"]  # involved_objects
    assert by_cat["color"][0].qid == "09143711"  # the dict form's key is the id
    # Derived from the program instead, two "spatial" questions ask an action relation.
    derived = load_questions("gqa", root, images).questions
    assert sum(q.category == "action" for q in derived) == 2


def test_file_category_names() -> None:
    assert [file_category(Path(n)) for n in ("Animal.json", "Indoor.json", "gqa_attribute_material.json", "Vehicle.json")] == [
        "animal", "indoor", "material", "vehicle"]  # fmt: skip


def test_pope_json_lines_named_json(tmp_path: Path) -> None:
    folder = tmp_path / "pope"
    folder.mkdir()
    shutil.copy(FIXTURES / "pope_adversarial.jsonl", folder / "coco_pope_adversarial.json")
    images = tmp_path / "val2014"
    images.mkdir()
    for line in (folder / "coco_pope_adversarial.json").read_text().splitlines():
        Image.new("RGB", (8, 8)).save(images / json.loads(line)["image"])
    one = load_questions("pope", folder / "coco_pope_adversarial.json", images).questions
    both = load_questions("pope", folder, images).questions  # a folder: .json files are read too
    assert len(one) == len(both) == 12 and one[0].category == "adversarial" and one[0].answer == "yes"


def test_cocoqa_release_names(tmp_path: Path) -> None:
    images = tmp_path / "train2014"
    images.mkdir()
    for kind in ("color", "count", "location"):
        shutil.copy(FIXTURES / f"cocoqa_{kind}.csv", tmp_path / f"{kind}_coco_qa.csv")
        for line in (tmp_path / f"{kind}_coco_qa.csv").read_text().splitlines()[1:]:
            Image.new("RGB", (8, 8)).save(images / f"COCO_train2014_{int(line.split(',')[1]):012d}.jpg")
    for kind, level in (("color", "attribute"), ("count", "object"), ("location", "relation")):
        qs = load_questions("cocoqa", tmp_path / f"{kind}_coco_qa.csv", images).questions
        assert len(qs) == 12 and {q.category for q in qs} == {kind} and {q.level for q in qs} == {level}


def test_single_answer_splits_are_named(release: tuple[Path, Path]) -> None:
    root, images = release
    qs = load_questions("gqa", root, images, category_from="file").questions
    assert single_answer_groups(qs) == {"object/animal": "yes", "relation/spatial": "yes"}
