"""Loaders on the real format samples (copied to tests/fixtures), with tiny fake images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vseam_run.data import load_questions
from vseam_run.errors import VseamError

FIXTURES = Path(__file__).parent / "fixtures"
GQA_FILES = [
    "gqa_attribute_color.json",
    "gqa_attribute_material.json",
    "gqa_object_animal.json",
    "gqa_relation_action.json",
    "gqa_relation_spatial.json",
]
COCOQA_FILES = ["cocoqa_color.csv", "cocoqa_count.csv", "cocoqa_location.csv"]


def _tiny(path: Path) -> None:
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


def _gqa_records(name: str) -> list[dict]:
    data = json.loads((FIXTURES / name).read_text())
    return list(data.values()) if isinstance(data, dict) else data


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An image folder holding a tiny image for every image the fixtures refer to."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in GQA_FILES:
        for rec in _gqa_records(name):
            _tiny(folder / f"{rec['imageId']}.jpg")
    for line in (FIXTURES / "pope_adversarial.jsonl").read_text().splitlines():
        _tiny(folder / json.loads(line)["image"])
    for name in COCOQA_FILES:
        with (FIXTURES / name).open() as f:
            for row in list(csv.reader(f))[1:]:
                _tiny(folder / f"COCO_train2014_{int(row[1]):012d}.jpg")
    return folder


# --- GQA --------------------------------------------------------------------------------------


def test_gqa_dict_form(images: Path) -> None:
    res = load_questions("gqa", FIXTURES / "gqa_attribute_color.json", images)
    data = json.loads((FIXTURES / "gqa_attribute_color.json").read_text())
    assert [q.qid for q in res.questions] == list(data)  # ids are the dict keys, file order kept
    q = res.questions[0]
    assert (q.level, q.category, q.answer, q.image_id) == ("attribute", "color", "yes", "2377940")
    assert q.objects == ["pants"] and (q.boxes[0].x, q.boxes[0].w) == (123.0, 95.0)
    assert q.image_path == images / "2377940.jpg"
    assert {q.answer for q in res.questions} == {"yes", "no"} and res.skipped == []


def test_gqa_list_form_and_relation_categories(images: Path) -> None:
    res = load_questions("gqa", FIXTURES / "gqa_relation_spatial.json", images)
    assert [q.qid for q in res.questions] == [r["question_id"] for r in _gqa_records("gqa_relation_spatial.json")]
    by_id = {q.qid: q for q in res.questions}
    assert by_id["19486857"].category == "spatial"  # "in front of"
    assert by_id["00518875"].category == "action"  # "covered with" is not spatial
    assert all(q.level == "relation" for q in res.questions)
    assert len(by_id["06924014"].boxes) == 3


def test_gqa_categories_of_other_levels(images: Path) -> None:
    material = load_questions("gqa", FIXTURES / "gqa_attribute_material.json", images).questions
    # verify-material questions have groups.global = None; the program decides.
    assert {q.category for q in material} == {"material"}
    animal = load_questions("gqa", FIXTURES / "gqa_object_animal.json", images).questions
    assert {(q.level, q.category) for q in animal} == {("object", "animal")}
    assert animal[1].objects == ["cow", "fence"]  # from relevant_objects
    action = {q.qid: q for q in load_questions("gqa", FIXTURES / "gqa_relation_action.json", images).questions}
    assert action["08185113"].category == "action"  # holding
    assert action["04605330"].category == "spatial"  # relate: man,to the left of,s


def test_filters_level_categories_limit(images: Path) -> None:
    path = FIXTURES / "gqa_relation_spatial.json"
    only_action = load_questions("gqa", path, images, categories=["action"])
    assert [q.qid for q in only_action.questions] == ["00518875", "00518871"]
    first3 = load_questions("gqa", path, images, level="relation", limit=3)
    assert [q.qid for q in first3.questions] == ["19486857", "02247621", "02247623"]
    with pytest.raises(VseamError, match="no question matches level attribute") as e:
        load_questions("gqa", path, images, level="attribute")
    assert "relation/spatial" in str(e.value)  # the hint lists what is there


def test_gqa_png_fallback_and_folder_of_files(images: Path, tmp_path: Path) -> None:
    jpg = images / "2377940.jpg"
    jpg.unlink()
    _tiny(images / "2377940.png")
    q = load_questions("gqa", FIXTURES / "gqa_attribute_color.json", images).questions[0]
    assert q.image_path == images / "2377940.png"
    folder = tmp_path / "qs"
    folder.mkdir()
    for name in GQA_FILES[:2]:
        shutil.copy(FIXTURES / name, folder / name)
    assert len(load_questions("gqa", folder, images).questions) == 24


def test_gqa_empty_answer_is_skipped(images: Path, tmp_path: Path) -> None:
    recs = _gqa_records("gqa_relation_spatial.json")[:3]
    recs[1]["answer"] = "  "
    path = tmp_path / "q.json"
    path.write_text(json.dumps(recs))
    res = load_questions("gqa", path, images)
    assert len(res.questions) == 2 and res.skipped == [(recs[1]["question_id"], "empty answer")]


# --- POPE and COCO-QA -------------------------------------------------------------------------


def test_pope(images: Path) -> None:
    res = load_questions("pope", FIXTURES / "pope_adversarial.jsonl", images)
    assert len(res.questions) == 12
    q = res.questions[1]
    assert (q.qid, q.level, q.category, q.answer) == ("pope_adversarial-2", "object", "adversarial", "no")
    assert q.image_path == images / "COCO_val2014_000000310196.jpg" and q.objects == ["backpack"]


@pytest.mark.parametrize(
    ("name", "level", "category"),
    [("cocoqa_color.csv", "attribute", "color"), ("cocoqa_count.csv", "object", "count"), ("cocoqa_location.csv", "relation", "location")],
)
def test_cocoqa(images: Path, name: str, level: str, category: str) -> None:
    res = load_questions("cocoqa", FIXTURES / name, images)
    assert len(res.questions) == 12
    assert {(q.level, q.category) for q in res.questions} == {(level, category)}
    assert all(q.question.endswith("?") for q in res.questions)
    assert res.questions[0].qid == f"{Path(name).stem}-0"


def test_cocoqa_image_by_plain_id(images: Path) -> None:
    (images / "COCO_train2014_000000023004.jpg").rename(images / "23004.jpg")
    q = load_questions("cocoqa", FIXTURES / "cocoqa_color.csv", images).questions[0]
    assert (q.image_id, q.image_path, q.answer) == ("23004", images / "23004.jpg", "brown")


# --- bad input --------------------------------------------------------------------------------


def test_missing_image_error_or_skip(images: Path) -> None:
    (images / "COCO_val2014_000000210789.jpg").unlink()  # shared by questions 7-12
    path = FIXTURES / "pope_adversarial.jsonl"
    with pytest.raises(VseamError) as e:
        load_questions("pope", path, images)
    assert "pope_adversarial-7" in e.value.message and "COCO_val2014_000000210789.jpg" in e.value.message
    assert "data.images" in (e.value.hint or "") and "on_missing_image: skip" in (e.value.hint or "")
    res = load_questions("pope", path, images, on_missing_image="skip")
    assert len(res.questions) == 6 and len(res.skipped) == 6
    assert all(reason.startswith("missing image") for _, reason in res.skipped)


def test_corrupt_image(images: Path) -> None:
    (images / "2377940.jpg").write_bytes(b"not an image at all")
    path = FIXTURES / "gqa_attribute_color.json"
    with pytest.raises(VseamError, match="09143711: corrupt image"):
        load_questions("gqa", path, images)
    res = load_questions("gqa", path, images, on_missing_image="skip")
    assert len(res.questions) == 11 and res.skipped[0][0] == "09143711" and "corrupt" in res.skipped[0][1]


def test_each_image_checked_once(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vseam_run.data as data

    calls: list[Path] = []
    original = data._ImageChecker._check
    monkeypatch.setattr(data._ImageChecker, "_check", staticmethod(lambda p: calls.append(p) or original(p)))
    load_questions("pope", FIXTURES / "pope_adversarial.jsonl", images)
    assert len(calls) == 2  # 12 questions on 2 images


def test_missing_data_file(images: Path, tmp_path: Path) -> None:
    for source in ("gqa", "pope", "cocoqa"):
        with pytest.raises(VseamError, match="data file not found: .*nope"):
            load_questions(source, tmp_path / "nope", images)  # type: ignore[arg-type]
    with pytest.raises(VseamError, match="image folder not found"):
        load_questions("gqa", FIXTURES / "gqa_attribute_color.json", tmp_path / "no-images")


def test_malformed_files(images: Path, tmp_path: Path) -> None:
    bad_json = tmp_path / "gqa.json"
    bad_json.write_text('{"1": {"question": "x",}')
    with pytest.raises(VseamError, match=r"gqa\.json: not valid JSON \(line 1"):
        load_questions("gqa", bad_json, images)
    lines = (FIXTURES / "pope_adversarial.jsonl").read_text().splitlines()
    bad_pope = tmp_path / "pope_random.jsonl"
    bad_pope.write_text("\n".join([lines[0], lines[1], "{oops", *lines[3:]]))
    with pytest.raises(VseamError, match=r"pope_random\.jsonl:3: not valid JSON"):
        load_questions("pope", bad_pope, images)
    bad_csv = tmp_path / "cocoqa_color.csv"
    bad_csv.write_text(",a,b,c\n0,23004,what is it\n")
    with pytest.raises(VseamError, match=r"cocoqa_color\.csv:2: expected 4 columns"):
        load_questions("cocoqa", bad_csv, images)
    unnamed = tmp_path / "questions.csv"
    shutil.copy(FIXTURES / "cocoqa_color.csv", unnamed)
    with pytest.raises(VseamError, match="cannot tell the question type"):
        load_questions("cocoqa", unnamed, images)


def test_truncated_jpeg_is_skipped_when_asked(images: Path) -> None:
    """verify() reads only the header of a JPEG, so a cut-off file passes it; the check decodes."""
    target = images / "2377940.jpg"
    Image.frombytes("RGB", (128, 128), bytes(range(256)) * 192).save(target, quality=95)
    target.write_bytes(target.read_bytes()[: target.stat().st_size * 2 // 3])  # cut inside the pixel data
    with Image.open(target) as im:
        im.verify()  # the premise: verify() alone does not notice
    path = FIXTURES / "gqa_attribute_color.json"
    with pytest.raises(VseamError, match="09143711: corrupt image"):
        load_questions("gqa", path, images)
    res = load_questions("gqa", path, images, on_missing_image="skip")
    assert res.skipped and res.skipped[0][0] == "09143711" and "corrupt image" in res.skipped[0][1]
    assert "09143711" not in {q.qid for q in res.questions}
    for q in res.questions:  # everything kept can be read by the later stages
        q.load_image()


def test_check_question_files_parses_without_opening_images(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vseam_run.data as data
    from vseam_run.data import check_question_files

    monkeypatch.setattr(data._ImageChecker, "_check", staticmethod(lambda p: pytest.fail("no image may be opened")))
    assert check_question_files("gqa", FIXTURES / "gqa_attribute_color.json", images) == 12
    assert check_question_files("cocoqa", FIXTURES / "cocoqa_color.csv", images, categories=["color"]) > 0
    # A COCO-QA file whose name does not tell its question type.
    odd = tmp_path / "cocoqa_misc.csv"
    shutil.copy(FIXTURES / "cocoqa_color.csv", odd)
    with pytest.raises(VseamError, match=r"cocoqa_misc\.csv: cannot tell the question type"):
        check_question_files("cocoqa", odd, images)
    # GQA records without a semantic type and no data.level.
    untyped = tmp_path / "untyped.json"
    untyped.write_text(json.dumps([{"question_id": "u1", "imageId": "2377940", "question": "What?", "answer": "x"}]))
    with pytest.raises(VseamError, match=r"untyped\.json: cannot tell the type of any question"):
        check_question_files("gqa", untyped, images)
    # Filters that keep nothing.
    with pytest.raises(VseamError, match="no question matches level relation"):
        check_question_files("gqa", FIXTURES / "gqa_attribute_color.json", images, level="relation")
