"""The benchmark rules that judge generated answers (vseam_run.answers), on hand-written outputs
and on the gold answers of the sample files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from vseam_run import answers

FIXTURES = Path(__file__).parent / "fixtures"

# (text, LLaVA eval_pope reading, lmms-eval strict reading)
POPE_CASES = [
    ("Yes.", "yes", "other"),
    ("yes", "yes", "yes"),
    (" No ", "no", "no"),
    ("No, there is not.", "no", "other"),
    ("yes and no", "no", "other"),  # LLaVA: any 'no' word → no
    ("", "yes", "other"),  # LLaVA: anything without no/not → yes, even nothing
    ("There is not a dog in the image.", "no", "other"),
    ("Yes. No.", "yes", "other"),  # LLaVA keeps the first sentence only
    ("NO", "yes", "no"),  # LLaVA's word test is case-sensitive ("NO" is not "No"); strict lower-cases
    ("Nothing, no", "no", "other"),  # the comma is dropped before splitting
    ("Not", "yes", "other"),  # 'Not' (capitalised) is not in LLaVA's list
]


@pytest.mark.parametrize("text,llava,strict", POPE_CASES)
def test_pope_parsers_on_hand_written_outputs(text, llava, strict):
    assert answers.pope_llava(text) == llava
    assert answers.pope_strict(text) == strict


def test_pope_parsers_on_the_sample_files_labels():
    rows = [json.loads(line) for line in (FIXTURES / "pope_adversarial.jsonl").read_text().splitlines() if line.strip()]
    assert {r["label"] for r in rows} == {"yes", "no"}
    for r in rows:
        assert answers.pope_llava(r["label"]) == r["label"]
        assert answers.pope_strict(r["label"]) == r["label"]
        assert answers.pope_llava(r["label"].capitalize() + ".") == r["label"]  # "Yes." / "No."
        assert answers.pope_strict(r["label"].capitalize() + ".") == "other"
        assert answers.judge("pope", r["label"], r["label"])


def test_gqa_rule_on_the_sample_files_answers():
    seen = 0
    for path in sorted(FIXTURES.glob("gqa_*.json")):
        data = json.loads(path.read_text())
        records = data.values() if isinstance(data, dict) else data
        for rec in records:
            if "answer" not in rec:
                continue
            gold = rec["answer"]
            seen += 1
            assert answers.judge("gqa", gold, gold)
            assert answers.judge("gqa", f" {gold.capitalize()}.", gold)  # case, punctuation, spaces
            assert not answers.judge("gqa", f"{gold} {gold}", gold)  # an answer that goes on is not the answer
            if rec.get("fullAnswer") and rec["fullAnswer"].lower().strip(".") != gold.lower():
                assert not answers.judge("gqa", rec["fullAnswer"], gold)  # a sentence is not an exact match
    assert seen >= 10


def test_cocoqa_rule_on_the_sample_files_answers():
    seen = 0
    for path in sorted(FIXTURES.glob("cocoqa_*.csv")):
        for gold in pd.read_csv(path)["answer_count"].astype(str) if "answer_count" in pd.read_csv(path) else []:
            seen += 1
            assert answers.judge("cocoqa", gold, gold)
            assert answers.judge("cocoqa", f"The {gold.upper()}!", gold)  # article, case, punctuation
            assert not answers.judge("cocoqa", f"not {gold}", gold)
    assert seen >= 3


def test_gqa_and_cocoqa_rules_on_hand_written_outputs():
    assert answers.judge("gqa", "Yes.", "yes")
    assert not answers.judge("gqa", "yes, it is", "yes")
    assert not answers.judge("gqa", "", "yes")
    assert answers.judge("gqa", "t-shirt", "tshirt")  # lmms-eval removes punctuation inside words too
    assert answers.judge("cocoqa", "a  dog", "dog")
    assert not answers.judge("cocoqa", "", "dog")
    with pytest.raises(ValueError, match="unknown answer rule"):
        answers.judge("wups", "dog", "dog")


def test_rule_for_source():
    assert answers.rule_for_source("toyworld") == "gqa"
    assert answers.rule_for_source("pope") == "pope"
    assert answers.rule_for_source("cocoqa") == "cocoqa"
    with pytest.raises(ValueError, match="no answer rule"):
        answers.rule_for_source("vqav2")


def test_yes_no_measures_by_hand():
    gold = ["yes", "yes", "yes", "no", "no", "no"]
    labels = ["yes", "no", "other", "yes", "no", "no"]
    m = answers.yes_no_measures(gold, labels)
    # tp 1, fn 2 (one 'other'), fp 1, tn 2
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.precision == pytest.approx(1 / 2)
    assert m.recall == pytest.approx(1 / 3)
    assert m.f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    assert m.yes_ratio == pytest.approx(2 / 6)  # predicted yes
    assert m.unparsed == 1
    assert m.lmms_eval_recall == pytest.approx(1 / 2)  # lmms-eval leaves the 'other' out
    assert m.lmms_eval_yes_ratio == pytest.approx(3 / 6)  # lmms-eval's yes_ratio is the gold share
    none = answers.yes_no_measures(["no", "no"], ["no", "no"])
    assert math.isnan(none.precision) and math.isnan(none.recall) and none.accuracy == 1.0


def test_yes_no_measures_refuses_bad_input():
    with pytest.raises(ValueError, match="gold answers must be yes or no"):
        answers.yes_no_measures(["red"], ["yes"])
    with pytest.raises(ValueError, match="2 gold answers but 1"):
        answers.yes_no_measures(["yes", "no"], ["yes"])
