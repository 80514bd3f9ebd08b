"""`vseam validate` agrees with the loader, and says what it ignores (issue 24, items 6-7).

Each case is one the issue found: validate said `ok` (or named the wrong thing) and then the run
stopped, or a setting silently did nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vseam_run.cli.main import cli
from vseam_run.data import check_question_files, load_questions

FIXTURES = Path(__file__).parent / "fixtures"


def _records() -> list[dict]:
    data = json.loads((FIXTURES / "gqa_object_animal.json").read_text())
    return list(data.values()) if isinstance(data, dict) else data


def call(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out + err


@pytest.fixture
def release(tmp_path, monkeypatch) -> Path:
    """A release-like folder: Vehicle.json (object questions) and the images they name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gqa").mkdir()
    shutil.copy(FIXTURES / "gqa_object_animal.json", tmp_path / "gqa" / "Vehicle.json")
    images = tmp_path / "images"
    images.mkdir()
    for rec in _records():
        Image.new("RGB", (8, 8)).save(images / f"{rec['imageId']}.jpg")
    return tmp_path


def _spec(root: Path, data: str, extra: str = "") -> Path:
    p = root / "spec.yaml"
    p.write_text(f"name: t\nmodel: toy-llava\ndevice: cpu\ndata: {data}\n{extra}")
    return p


def test_validate_takes_categories_as_the_loader_does(capsys, release):
    data = "{source: gqa, path: gqa, images: images, categories: [indoor], category_from: file}"
    rc, out = call(capsys, "validate", _spec(release, data))
    assert rc == 2 and "no question matches categories ['indoor']" in out, out
    # The count the check gives is the load's, with category_from: file (a file's category).
    n = check_question_files("gqa", release / "gqa", release / "images", categories=["vehicle"], category_from="file")
    loaded = load_questions("gqa", release / "gqa", release / "images", categories=["vehicle"], category_from="file")
    assert n == len(loaded.questions) == 12
    rc, out = call(capsys, "validate", _spec(release, data.replace("indoor", "vehicle")))
    assert rc == 0 and "ok" in out, out


def test_evaluate_extra_has_category_from(capsys, release):
    extra = ("search: {strategy: exact}\nmodulation: {policy: linear}\nevaluate:\n  extra:\n    - {name: v, source: gqa, path: gqa, images: images, categories: [indoor], "
             "category_from: file}\n")  # fmt: skip
    rc, out = call(capsys, "validate", _spec(release, "{source: toyworld}", extra))
    assert rc == 2 and "evaluate.extra.0:" in out and "no question matches categories ['indoor']" in out, out


def test_an_image_folder_without_the_questions_images_is_refused(capsys, release):
    (release / "other").mkdir()
    rc, out = call(capsys, "validate", _spec(release, "{source: gqa, path: gqa, images: other, on_missing_image: skip}"))
    assert rc == 2 and "none of the first 5 questions' images is in other" in out, out
    first = next(iter(_records()))["imageId"]
    (release / "images" / f"{first}.jpg").unlink()
    rc, out = call(capsys, "validate", _spec(release, "{source: gqa, path: gqa, images: images}"))
    assert rc == 2 and f"{first}.jpg" in out and "on_missing_image: skip" in out, out


def test_a_pope_file_in_a_gqa_folder_is_named(capsys, release):
    shutil.copy(FIXTURES / "pope_adversarial.jsonl", release / "gqa" / "coco_pope_adversarial.json")
    rc, out = call(capsys, "validate", _spec(release, "{source: gqa, path: gqa, images: images}"))
    assert rc == 2 and "coco_pope_adversarial.json: looks like POPE" in out and "source: pope" in out, out
    assert "Extra data" not in out


def test_a_missing_extra_file_names_its_own_field(capsys, release):
    extra = "search: {strategy: exact}\nmodulation: {policy: linear}\nevaluate:\n  extra:\n    - {name: v, source: pope, path: nowhere.jsonl, images: images}\n"
    rc, out = call(capsys, "validate", _spec(release, "{source: toyworld}", extra))
    assert rc == 2 and "point evaluate.extra.0.path at it" in out and "point data.path" not in out, out


def test_ignored_settings_are_warned_about(capsys, release):
    spec = _spec(release, "{source: toyworld}", "search: {strategy: attribution, verify_k: 5}\n")
    rc, out = call(capsys, "validate", spec, "--spec-only")
    assert rc == 0 and "warning: search.verify_k: ignored with strategy 'attribution'" in out, out
    spec = _spec(release, "{source: toyworld}", "search: {strategy: attribution+verify, verify_k: 5}\n")
    rc, out = call(capsys, "validate", spec, "--spec-only")
    assert rc == 0 and "warning" not in out, out


def test_set_errors_name_the_override(capsys, release):
    spec = _spec(release, "{source: toyworld}", "seed: 0\nmodulation: {policy: linear}\n")
    rc, out = call(capsys, "run", spec, "--set", "seed=abc")
    assert rc == 2 and "seed:" in out and "(from --set seed=abc)" in out and "line 4" not in out, out
    rc, out = call(capsys, "run", spec, "--set", "seed", "1")
    assert rc == 2 and "--set seed: expected key=value (e.g. --set seed=1)" in out, out
    assert "unexpected extra argument" not in out
    rc, out = call(capsys, "run", spec, "--set", "modulation.policy=nope")
    assert rc == 2 and "modulation.policy: unknown policy 'nope'; use linear, topk, paper, learned, none, ablate, steer or image_attention" in out, out
    assert "Input tag" not in out
