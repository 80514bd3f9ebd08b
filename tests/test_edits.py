"""Procedural edits: only masked pixels change, the answer flips as the edited scene says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vseam_run.data import Question, load_questions
from vseam_run.data.toyworld import Target, ToyWorldParams, answer, scene_from_dict
from vseam_run.edit import EditResult, make_edits, procedural_edit
from vseam_run.errors import VseamError


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> list[Question]:
    cache = tmp_path_factory.mktemp("cache")
    return load_questions("toyworld", None, None, toyworld=ToyWorldParams(seed=5, images=50), cache_dir=cache).questions


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_every_edit_is_exact_and_flips_the_answer(questions: list[Question], tmp_path: Path) -> None:
    results = make_edits(questions, tmp_path, progress=False)
    assert [r.qid for r in results] == [q.qid for q in questions]
    assert {q.category for q in questions} == {"round", "boxy", "pointy", "color", "material", "spatial", "link"}
    for q, r in zip(questions, results):
        before, after = _pixels(q.image_path), _pixels(r.image_path)
        mask = np.asarray(Image.open(r.mask_path)) == 255
        changed = np.any(before != after, axis=2)
        assert not changed[~mask].any(), q.qid  # nothing changes outside the mask
        assert np.array_equal(changed, mask), q.qid  # and the mask is exactly the change
        ys, xs = np.nonzero(mask)
        b = r.mask_bbox
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (b.x, b.y, b.x + b.w, b.y + b.h)
        # The recorded answer is what the world itself says about the edited scene.
        edited = scene_from_dict(r.edited_scene or {})
        assert r.edited_answer == answer(edited, Target.from_dict(q.extra["target"])) != r.original_answer == q.answer
        assert "→" in r.edit_text


def test_spatial_edits_leave_other_objects_in_place(questions: list[Question], tmp_path: Path) -> None:
    for q in [q for q in questions if q.category == "spatial"][:10]:
        r = procedural_edit(q, tmp_path)
        t = Target.from_dict(q.extra["target"])
        before = {o.oid: o for o in scene_from_dict(q.extra["scene"]).objects}
        after = {o.oid: o for o in scene_from_dict(r.edited_scene or {}).objects}
        for oid in set(before) - {t.subject, t.obj}:
            assert before[oid] == after[oid]


def test_edits_are_deterministic_and_cached(questions: list[Question], tmp_path: Path) -> None:
    sample = questions[:8]
    first = make_edits(sample, tmp_path / "a", progress=False)
    second = make_edits(sample, tmp_path / "b", progress=False)
    for r1, r2 in zip(first, second):
        assert r1.image_path.read_bytes() == r2.image_path.read_bytes() and r1.edit_text == r2.edit_text
    stamp = first[0].image_path.stat().st_mtime_ns
    again = procedural_edit(sample[0], tmp_path / "a")
    assert again == first[0] and first[0].image_path.stat().st_mtime_ns == stamp


def test_cache_is_not_reused_for_another_scene(questions: list[Question], tmp_path: Path) -> None:
    color_qs = [q for q in questions if q.category == "color"][:2]
    a, b = color_qs
    first = procedural_edit(a, tmp_path)
    # Same id, another scene (as after regenerating with other parameters): must be remade.
    impostor = Question(a.qid, b.image_id, b.image_path, b.question, b.answer, b.level, b.category, extra=b.extra)
    remade = procedural_edit(impostor, tmp_path)
    assert remade.original_answer == b.answer and remade.edited_scene != first.edited_scene


def test_question_without_scene_graph(tmp_path: Path) -> None:
    q = Question("gqa-1", "img", tmp_path / "img.jpg", "Is the car red?", "yes", "attribute", "color")
    with pytest.raises(VseamError, match="gqa-1: procedural edits need a toy-world scene graph") as e:
        procedural_edit(q, tmp_path)
    assert "toyworld" in (e.value.hint or "")


def test_result_round_trips_through_json(questions: list[Question], tmp_path: Path) -> None:
    r = procedural_edit(questions[0], tmp_path)
    assert EditResult.from_json(r.to_json(), tmp_path) == r
