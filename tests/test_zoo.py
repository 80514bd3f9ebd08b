"""The shipped toy models: they load through their registry entries and answer the toy world."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from vseam_run.data import toyworld
from vseam_run.registry import get_entry
from vseam_run.scoring import Item, ScoredSet, accuracy
from vseam_run.vlm import VLM
from vseam_run.zoo.train import ZOO_DIR, train


# The target for the shipped toy models: high enough that heads and edits mean something, and
# not perfect, so that the model makes mistakes and negative heads can exist. Checked on the
# training report's 2,000 held-out questions (the targets themselves) and, with room for the
# sampling noise of 600 questions, on a fresh sample through the registry entry.
OVERALL = (0.80, 0.97)
EVERY_CATEGORY = 0.75  # e.g. spatial and link each: no level may pass on one kind of question alone
# Errors every level keeps, so negative heads can exist: at least 8 % (objects, learned first, keep
# them because the recipes give object questions 0.3 of their share; see zoo/train.py).
MIN_ERRORS = {"object": 0.08, "attribute": 0.08, "relation": 0.08}
EVERY_LEVEL_FRESH = 0.70
EVERY_CATEGORY_FRESH = 0.65  # about 85 questions per category in 600


SHIPPED = ["toy-llava", "toy-instructblip", "toy-llava-spread"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_answers_a_fresh_sample(name):
    entry = get_entry(name)
    assert (entry.resolved_path() / "model.safetensors").stat().st_size <= 10 * 2**20
    vlm = VLM.load(entry, torch.device("cpu"), torch.float32)
    assert vlm.num_layers >= 6 and vlm.num_heads >= 8
    # A seed the training data never used.
    examples = toyworld.sample_examples(random.Random(424242), 600, 32)
    gold = vlm.answer_token_ids([e.answer for e in examples])
    items = [Item(str(i), e.image, e.question, e.answer, g, e.category) for i, (e, g) in enumerate(zip(examples, gold))]
    rows = ScoredSet(vlm, items, 64).run()
    by_level: dict[str, list[dict]] = {}
    by_category: dict[str, list[dict]] = {}
    for r, e in zip(rows, examples):
        by_level.setdefault(e.level, []).append(r)
        by_category.setdefault(e.category, []).append(r)
    overall = accuracy(rows)
    assert OVERALL[0] <= overall <= OVERALL[1], overall
    levels = {level: accuracy(r) for level, r in by_level.items()}
    assert set(levels) == {"object", "attribute", "relation"}
    assert min(levels.values()) >= EVERY_LEVEL_FRESH, levels
    categories = {k: accuracy(r) for k, r in by_category.items()}
    assert set(categories) == set(toyworld.CATEGORIES) and min(categories.values()) >= EVERY_CATEGORY_FRESH, categories
    report = json.loads((entry.resolved_path() / "train_report.json").read_text())
    assert abs(report["held_out_accuracy"]["overall"] - overall) < 0.06  # the report describes these weights


@pytest.mark.parametrize("name", ["toy-llava", "toy-instructblip", pytest.param("toy-llava-spread", marks=pytest.mark.xfail(
    strict=True, reason="the shipped attempt keeps 7.2 % object errors, under the 8 % target (README, toy-llava-spread)"))])
def test_shipped_model_meets_the_targets_on_its_held_out_set(name):
    acc = json.loads((ZOO_DIR / name / "train_report.json").read_text())["held_out_accuracy"]
    assert OVERALL[0] <= acc["overall"] <= OVERALL[1]
    assert min(acc[f"category.{c}"] for c in toyworld.CATEGORIES) >= EVERY_CATEGORY
    assert all(acc[level] <= 1 - errors for level, errors in MIN_ERRORS.items()), acc


@pytest.mark.parametrize("name", SHIPPED)
def test_train_report_is_shipped(name):
    report = json.loads((ZOO_DIR / name / "train_report.json").read_text())
    assert report["recipe"]["seed"] == 0 and report["train_seconds"] <= 16 * 60
    assert report["recipe"]["model"]["text_layers"] >= 6 and report["recipe"]["model"]["text_heads"] >= 8


def test_training_is_seeded(tmp_path):
    """Two short trainings with the same seed give bit-identical weights."""
    from safetensors.torch import load_file

    a = train("toy-llava", tmp_path / "a", steps=3, log=lambda s: None, quick=True)
    b = train("toy-llava", tmp_path / "b", steps=3, log=lambda s: None, quick=True)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["held_out_accuracy"] == b["held_out_accuracy"]


def _scene():
    from vseam_run.data.toyworld import Scene, ToyObject

    # A red striped circle top-left, a blue solid square bottom-right, linked.
    circle = ToyObject("o0", "circle", "red", "striped", 0, 0, 12, 12)
    square = ToyObject("o1", "square", "blue", "solid", 18, 18, 12, 12)
    return Scene(32, 32, (circle, square), frozenset({frozenset(("o0", "o1"))}))


def test_training_labels_describe_the_scene():
    """The facts the training aids teach are the scene's: kind per patch, colour, material,
    position thresholds, links, and how two named objects relate."""
    from vseam_run.data.toyworld import KINDS
    from vseam_run.zoo.train import FACT_GROUPS, kind_facts, pair_facts, patch_kinds

    scene = _scene()
    kinds = patch_kinds(scene, 8).reshape(4, 4)
    c, s = KINDS.index("circle"), KINDS.index("square")
    assert (kinds[:2, :2] == c).all() and (kinds[2:, 2:] == s).all()
    assert kinds[0, 3] == -1 and kinds[3, 0] == -1  # background corners
    facts = kind_facts(scene)
    assert facts[KINDS.index("triangle")].sum() == 0  # absent kind: all zeros
    row = facts[c]
    assert row[FACT_GROUPS["present"]].tolist() == [1.0]
    assert row[FACT_GROUPS["color"]].tolist() == [1.0, 0.0, 0.0, 0.0]  # red
    assert row[FACT_GROUPS["material"]].tolist() == [0.0, 1.0, 0.0]  # striped
    assert row[FACT_GROUPS["x"]].tolist() == [1.0, 0, 0, 0, 0, 0, 0]  # centre x = 6/32: only > 1/8
    assert facts[s][FACT_GROUPS["x"]].tolist() == [1.0] * 5 + [0.0] * 2  # centre x = 24/32, not > 6/8
    assert row[FACT_GROUPS["links"]][s] == 1.0 and row[FACT_GROUPS["links"]][c] == 0.0
    assert row[FACT_GROUPS["linked"]].tolist() == [1.0]  # takes part in a link: wears the halo
    unlinked = kind_facts(scene.with_link("o0", "o1", False))
    assert unlinked[c][FACT_GROUPS["linked"]].tolist() == [0.0] and unlinked[c][FACT_GROUPS["links"]].sum() == 0
    # circle vs square: left of, not right of, above, not below, linked.
    assert pair_facts(scene, "circle", "square") == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert pair_facts(scene, "circle", "diamond") == [0.0] * 5


def test_instructblip_trains_from_scratch_with_distinct_queries(tmp_path):
    """The library zero-initialises InstructBLIP's query tokens; identical queries would stay
    identical under training. The builder breaks the symmetry, and the InstructBLIP training
    path (vision tower + Q-Former stage, then the whole model) runs."""
    from safetensors.torch import load_file

    report = train("toy-instructblip", tmp_path / "ib", steps=2, log=lambda s: None, quick=True)
    weights = load_file(tmp_path / "ib" / "model.safetensors")
    q = weights["query_tokens"][0]
    assert q.shape[0] == report["recipe"]["model"]["num_query_tokens"]
    assert torch.cdist(q, q).fill_diagonal_(1.0).min() > 0  # no two queries alike


def test_lookup_loss_rewards_attention_on_the_named_objects_patches():
    """The lookup aid is low when a kind word's head attends to its object's image tokens, high
    when it attends elsewhere, and ignores kind words whose object is absent."""
    from vseam_run.zoo.train import lookup_loss

    # One example: 4 image tokens at positions 0-3 (patch kinds 2, 2, -1, 5), kind words at 4 and 5.
    patch_kinds = torch.tensor([[2, 2, -1, 5]])
    image_pos = torch.tensor([[0, 1, 2, 3]])
    mention = torch.tensor([[-1, -1, -1, -1, 2, 1]])  # kind 2 (present), kind 1 (absent: free)
    on_object = torch.zeros(1, 6, 6)
    on_object[0, 4, :2] = 0.5  # the kind-2 word looks at both kind-2 patches
    on_object[0, 5, 3] = 1.0  # the absent kind's word looks anywhere
    elsewhere = torch.zeros(1, 6, 6)
    elsewhere[0, 4, 3] = 0.9
    elsewhere[0, 4, 0] = 0.1
    assert lookup_loss(on_object, mention, patch_kinds, image_pos).item() < 1e-5
    assert lookup_loss(elsewhere, mention, patch_kinds, image_pos).item() == pytest.approx(-math.log(0.1), rel=1e-5)
