"""Answer matching rules and the yes/no benchmarks' measures (POPE, GQA yes/no)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vseam_run.evaluate import answer_label, apply_answer_match, compare_yes_no, normalize_token

CANON = {"yes": "▁Yes", "no": "▁No"}


def _rows(gold, pred, cats=None):
    return [{"qid": f"q{i}", "gold": g, "pred": p, "correct": False, "gold_prob": 0.5,
             "category": (cats[i] if cats else None)} for i, (g, p) in enumerate(zip(gold, pred))]


def test_labels_under_both_rules() -> None:
    assert [normalize_token(t) for t in ("▁Yes", "ĠNO", "yes", " YES")] == ["yes", "no", "yes", "yes"]
    assert answer_label("▁yes", "variants") == "yes" and answer_label("Yes", "variants") == "yes"
    assert answer_label("▁maybe", "variants") == "other"
    # first_token: only the exact tokens yes / no are scored by.
    assert answer_label("▁Yes", "first_token", CANON) == "yes"
    assert answer_label("▁yes", "first_token", CANON) == "other"
    assert answer_label("▁No", "first_token", CANON) == "no"
    with pytest.raises(ValueError):
        answer_label("x", "fuzzy")


def test_apply_answer_match_only_rejudges_yes_no() -> None:
    rows = [{"qid": "a", "gold": "yes", "pred": "▁yes", "correct": False},
            {"qid": "b", "gold": "No", "pred": "no", "correct": False},
            {"qid": "c", "gold": "no", "pred": "▁Yes", "correct": False},
            {"qid": "d", "gold": "red", "pred": "▁Red", "correct": False}]
    out = apply_answer_match(rows, "variants")
    assert [r["correct"] for r in out] == [True, True, False, False]
    assert all(r["extra"]["answer_match"] == "variants" for r in out)
    assert rows[0]["correct"] is False and "extra" not in rows[0]  # input untouched
    assert [r["correct"] for r in apply_answer_match(rows, "first_token")] == [False] * 4


def test_f1_on_a_hand_checked_example() -> None:
    gold = ["yes", "yes", "yes", "no", "no", "no", "yes", "no"]
    base = ["▁Yes", "▁No", "▁Yes", "▁Yes", "▁No", "▁maybe", "▁Yes", "▁No"]
    # TP = 3 (0, 2, 6), FN = 1 (1), FP = 1 (3), TN = 2 (4, 7), 'other' on a gold no (5) is wrong.
    mod = ["▁Yes"] * 8  # always yes: TP 4, FP 4
    yn = compare_yes_no(_rows(gold, base), _rows(gold, mod), "first_token", CANON, n_boot=300, seed=1)
    m = {k: (v.baseline.estimate, v.modulated.estimate) for k, v in yn.measures.items()}
    assert m["accuracy"] == (5 / 8, 4 / 8)
    assert m["precision"] == (3 / 4, 4 / 8)
    assert m["recall"] == (3 / 4, 1.0)
    assert m["f1"] == (0.75, 2 * 4 / (2 * 4 + 4))
    assert m["yes_ratio"] == (4 / 8, 1.0)
    assert yn.other_baseline == 1 and yn.other_modulated == 0
    for v in yn.measures.values():
        assert v.baseline.low <= v.baseline.estimate <= v.baseline.high
        assert math.isclose(v.diff.estimate, v.modulated.estimate - v.baseline.estimate)
    metrics = yn.as_metrics("eval.test")
    assert metrics["eval.test.yesno.f1.baseline"] == 0.75 and metrics["eval.test.yesno.n"] == 8


def test_rule_changes_the_counts_and_accuracy_matches_the_judged_rows() -> None:
    gold = ["yes", "no", "yes", "no"]
    pred = ["▁yes", "no", "▁Yes", "▁No"]
    rows = _rows(gold, pred)
    strict = compare_yes_no(rows, rows, "first_token", CANON, n_boot=100)
    loose = compare_yes_no(rows, rows, "variants", CANON, n_boot=100)
    assert strict.measures["accuracy"].baseline.estimate == 0.5
    assert loose.measures["accuracy"].baseline.estimate == 1.0
    judged = apply_answer_match(rows, "variants")
    assert np.mean([r["correct"] for r in judged]) == loose.measures["accuracy"].baseline.estimate
    # Identical arms: every difference interval is exactly 0.
    assert all(v.diff.low == v.diff.high == 0 for v in loose.measures.values())


def test_per_split_and_non_yes_no_sets() -> None:
    gold = ["yes", "no"] * 6
    cats = ["random"] * 6 + ["adversarial"] * 6
    base = _rows(gold, ["▁Yes"] * 12, cats)
    mod = _rows(gold, ["▁Yes", "▁No"] * 6, cats)
    yn = compare_yes_no(base, mod, "first_token", CANON, n_boot=100)
    assert set(yn.groups) == {"random", "adversarial"}
    assert yn.groups["random"].measures["yes_ratio"].baseline.estimate == 1.0
    assert yn.groups["adversarial"].measures["accuracy"].modulated.estimate == 1.0
    assert any(r["split"] == "random" for r in yn.rows()) and yn.rows()[-1]["split"] == "all"
    assert compare_yes_no(_rows(["yes", "red"], ["▁Yes", "▁Red"]), _rows(["yes", "red"], ["▁Yes", "▁Red"]), "variants") is None
    with pytest.raises(ValueError):
        compare_yes_no(base, mod[:-1], "first_token", CANON)
