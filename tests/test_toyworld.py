"""The toy world: determinism, balance, vocabulary, GQA round trip, caching, fast sampling."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vseam_run.data import load_questions
from vseam_run.data.toyworld import (
    CATEGORIES,
    COLORS,
    KINDS,
    ToyWorldParams,
    answer,
    answer_vocabulary,
    export_toyworld,
    generate,
    sample_examples,
    scene_from_dict,
    scene_to_dict,
    vocabulary,
    words,
)
from vseam_run.data.toyworld.counterfactual import has_counterfactual
from vseam_run.data.toyworld.render import shape_masks
from vseam_run.data.toyworld.world import layout_ok
from vseam_run.errors import VseamError

SMALL = ToyWorldParams(seed=3, images=40)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_per_seed(tmp_path: Path) -> None:
    export_toyworld(SMALL, tmp_path / "a")
    export_toyworld(SMALL, tmp_path / "b")
    export_toyworld(ToyWorldParams(seed=4, images=40), tmp_path / "c")
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b  # every image byte and every question identical
    assert a["questions.json"] != c["questions.json"]
    assert a["images/toy3-00000.png"] != c["images/toy4-00000.png"]


def test_balance_and_single_word_answers() -> None:
    qs = generate(ToyWorldParams(seed=1, images=200)).questions
    counts = Counter((q.category, q.answer) for q in qs)
    assert {q.category for q in qs} == set(CATEGORIES)
    for cat in CATEGORIES:
        if cat != "color":
            assert counts[cat, "yes"] == counts[cat, "no"] > 10, cat
    # Every category gets about the same share, including link questions, whose "no" needs a
    # three-object scene with a link (a turn that scene cannot serve is owed to the next one).
    per_category = Counter(q.category for q in qs)
    assert min(per_category.values()) >= 0.8 * max(per_category.values()), per_category
    colors = [counts["color", c] for c in COLORS]
    # spread evenly: each colour question asks about the scene's least-used answer colour, which a
    # scene may lack, so counts drift a little (a free draw over ~86 questions: sd ≈ 4 per colour)
    assert min(colors) > 0 and max(colors) - min(colors) <= 3
    vocab = set(vocabulary())
    for q in qs:
        assert q.answer in answer_vocabulary() and len(q.answer.split()) == 1
        assert set(words(q.question)) <= vocab, q.question


def test_scenes_are_valid_and_answers_follow_the_scene() -> None:
    toy = generate(SMALL)
    for s in toy.scenes.values():
        assert 2 <= len(s.objects) <= 3 and len({o.kind for o in s.objects}) == len(s.objects)
        assert layout_ok(s.objects, s.width)
        assert scene_from_dict(scene_to_dict(s)) == s
    for q in toy.questions:
        assert answer(q.scene, q.target) == q.answer and has_counterfactual(q.scene, q.target)


def test_links_are_visible_at_both_ends_and_chains_need_the_line() -> None:
    """Both linked objects wear a dark halo (and only linked objects do), so "linked to" can be
    read at each object; in a chain A–B–C, A and C both wear halos without being linked, so only
    the line answers "Is A linked to C?". Link questions are asked only where one of the two is
    linked, and a link edit adds or removes just that link."""
    from vseam_run.data.toyworld import Target
    from vseam_run.data.toyworld.counterfactual import edit_scene
    from vseam_run.data.toyworld.questions import candidates
    from vseam_run.data.toyworld.render import LINE_COLOR, render_array

    toy = generate(SMALL)
    assert all(len(s.links) <= 2 for s in toy.scenes.values())
    assert sum(len(s.links) for s in toy.scenes.values()) > 5
    scene = next(s for s in toy.scenes.values() if len(s.links) == 1 and len(s.objects) == 3)
    (pair,) = scene.links
    a, b = sorted(pair)
    c = next(o.oid for o in scene.objects if o.oid not in pair)
    dark = (render_array(scene) == LINE_COLOR).all(-1)
    unlinked = scene.with_link(a, b, False)
    assert not unlinked.links and not (render_array(unlinked) == LINE_COLOR).all(-1).any()
    assert candidates(unlinked, "link") == []  # no halo anywhere: nothing to ask

    def ring_dark(s_dark: np.ndarray, oid: str) -> int:
        o = scene.obj(oid)  # the 1-px ring just outside the box
        y0, x0, y1, x1 = max(o.y - 1, 0), max(o.x - 1, 0), min(o.y + o.h + 1, 32), min(o.x + o.w + 1, 32)
        return int(s_dark[y0:y1, x0:x1].sum())

    assert ring_dark(dark, a) >= 10 and ring_dark(dark, b) >= 10  # haloed
    assert ring_dark(dark, c) == 0  # the third object is not
    chain = edit_scene(scene, Target("link", subject=b, obj=c), random.Random(0))
    assert chain is not None and chain.scene.links == frozenset({pair, frozenset((b, c))})
    assert ring_dark((render_array(chain.scene) == LINE_COLOR).all(-1), c) >= 10
    ends = Target("link", subject=a, obj=c)  # both haloed, not linked: the hard "no"
    assert answer(chain.scene, ends) == "no" and ends in candidates(chain.scene, "link")
    # The generator draws such chains and asks about their two ends.
    hard = [e for e in sample_examples(random.Random(0), 1400) if e.category == "link" and e.answer == "no"
            and {e.target.subject, e.target.obj} <= e.scene.linked_objects()]
    assert len(hard) >= 10


def test_kinds_and_materials_are_visible_at_every_size() -> None:
    """Every kind differs from every other in its silhouette and, in each material, in its painted
    pixels; every material differs from every other on each kind: no edit of a kind or a material
    can leave the image unchanged, and no such question is about something invisible."""
    from vseam_run.data.toyworld.render import MIN_TEXTURE_PIXELS, painted_mask
    from vseam_run.data.toyworld.world import MATERIALS, object_size_range

    lo, hi = object_size_range(32)
    assert lo >= 9
    for size in range(lo, hi + 1):
        masks = {k: shape_masks(k, size, size)[0] for k in KINDS}
        for i, a in enumerate(KINDS):
            for b in KINDS[i + 1 :]:
                assert (masks[a] != masks[b]).sum() >= size, (a, b, size)
                for m in MATERIALS:
                    assert (painted_mask(a, m, size, size) != painted_mask(b, m, size, size)).sum() >= 4, (a, b, m, size)
        for k in KINDS:
            for i, m in enumerate(MATERIALS):
                for n in MATERIALS[i + 1 :]:
                    diff = (painted_mask(k, m, size, size) != painted_mask(k, n, size, size)).sum()
                    assert diff >= MIN_TEXTURE_PIXELS, (k, m, n, size)


def test_round_trip_through_gqa_loader(tmp_path: Path) -> None:
    path = export_toyworld(SMALL, tmp_path)
    loaded = load_questions("gqa", path, tmp_path / "images").questions
    expected = generate(SMALL).questions
    got = [(q.qid, q.question, q.answer, q.category, q.level, q.image_id) for q in loaded]
    assert got == [(q.qid, q.question, q.answer, q.category, q.level, q.image_id) for q in expected]
    assert all(q.image_path.suffix == ".png" for q in loaded)


def test_toyworld_source_generates_once_into_cache(tmp_path: Path) -> None:
    res = load_questions("toyworld", None, None, toyworld=SMALL, cache_dir=tmp_path)
    (folder,) = list(tmp_path.iterdir())  # no temporary folder left behind
    assert folder.name.startswith("toyworld-")
    stamp = (folder / "questions.json").stat().st_mtime_ns
    again = load_questions("toyworld", None, None, toyworld=SMALL, cache_dir=tmp_path, categories=["spatial"], limit=5)
    assert (folder / "questions.json").stat().st_mtime_ns == stamp
    assert len(again.questions) == 5 and {q.category for q in again.questions} == {"spatial"}
    q = next(q for q in res.questions if q.category == "color")
    scene = scene_from_dict(q.extra["scene"])
    assert q.image_id in {p.stem for p in (folder / "images").iterdir()}
    (obj,) = [o for o in scene.objects if o.oid == q.extra["target"]["subject"]]
    assert q.objects == [obj.kind] and (q.boxes[0].x, q.boxes[0].y) == (obj.x, obj.y)


def test_toyworld_rejects_paths(tmp_path: Path) -> None:
    with pytest.raises(VseamError, match="not used with source toyworld"):
        load_questions("toyworld", tmp_path / "q.json", None, toyworld=SMALL, cache_dir=tmp_path)


def test_sample_examples_fast_and_varied() -> None:
    start = time.perf_counter()
    ex = sample_examples(random.Random(0), 300)
    per_item = (time.perf_counter() - start) / 300
    assert per_item < 0.01  # typically ~0.5 ms; generous for a busy CI machine
    assert [e.question for e in sample_examples(7, 20)] == [e.question for e in sample_examples(7, 20)]
    assert {e.category for e in ex} == set(CATEGORIES)
    assert ex[0].image.size == (32, 32) and sample_examples(1, 1, image_size=48)[0].image.size == (48, 48)
    for e in ex[:50]:
        assert answer(e.scene, e.target) == e.answer
        assert np.asarray(e.image).dtype == np.uint8


def test_cache_key_follows_the_generators_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached toy set is named by its parameters and by the toy world's source, so changed
    rendering code regenerates the set instead of failing on (or silently reusing) stale images."""
    from vseam_run.data.toyworld import export

    before = SMALL.digest()
    assert before == ToyWorldParams(seed=3, images=40).digest()
    monkeypatch.setattr(export, "generator_source_hash", lambda: "edited-render-code")
    assert SMALL.digest() != before
