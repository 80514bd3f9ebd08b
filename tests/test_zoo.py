"""The shipped toy models: they load through their registry entries and answer the toy world."""

from __future__ import annotations

import json
import random

import pytest
import torch

from vseam_run.data import toyworld
from vseam_run.registry import get_entry
from vseam_run.scoring import Item, ScoredSet, accuracy
from vseam_run.vlm import VLM
from vseam_run.zoo.train import ZOO_DIR, train


# What the shipped weights reach on held-out toy questions (train_report.json), minus a margin
# for a 600-question sample. These are regression floors, NOT the target (overall
# 0.80-0.97, every level >= 0.65), which the current recipe misses (see README, "Results").
FLOORS = {
    "toy-llava": {"overall": 0.70, "object": 0.88},
    "toy-instructblip": {"overall": 0.55, "object": 0.72},
}


@pytest.mark.parametrize("name", ["toy-llava", "toy-instructblip"])
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
    for r, e in zip(rows, examples):
        by_level.setdefault(e.level, []).append(r)
    overall = accuracy(rows)
    assert FLOORS[name]["overall"] <= overall <= 0.97, overall  # learned something, and still makes mistakes
    assert accuracy(by_level["object"]) >= FLOORS[name]["object"]
    report = json.loads((entry.resolved_path() / "train_report.json").read_text())
    assert abs(report["held_out_accuracy"]["overall"] - overall) < 0.06  # the report describes these weights


@pytest.mark.parametrize("name", ["toy-llava", "toy-instructblip"])
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
