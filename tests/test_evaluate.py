"""Statistics of stage 5: McNemar, paired bootstrap, summaries and arm comparison."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from vseam_run.evaluate import (
    CI,
    compare_arms,
    mcnemar_exact_p,
    paired_bootstrap_ci,
    summarize,
)


def _arms(b: int, c: int, both_right: int = 3, both_wrong: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness with b (base right, mod wrong) and c (base wrong, mod right) pairs."""
    base = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    mod = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(base), np.array(mod)


# --- McNemar ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 5, 2 * (1 / 32)),  # only P[X=0] = 1/32
        (5, 0, 2 * (1 / 32)),  # symmetric
        (1, 9, 2 * (1 + 10) / 1024),  # C(10,0)+C(10,1) = 11
        (2, 8, 2 * (1 + 10 + 45) / 1024),
        (4, 4, 1.0),  # b == c: tail >= 1/2, capped at 1
        (7, 7, 1.0),
        (0, 0, 1.0),  # no discordant pairs
        (0, 1, 1.0),  # 2 * 1/2
    ],
)
def test_mcnemar_hand_computed(b: int, c: int, expected: float) -> None:
    base, mod = _arms(b, c)
    assert mcnemar_exact_p(base, mod) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_ignores_concordant_pairs() -> None:
    assert mcnemar_exact_p(*_arms(1, 9, 0, 0)) == mcnemar_exact_p(*_arms(1, 9, 50, 40))


def test_mcnemar_large_counts_do_not_overflow() -> None:
    # 2**3000 overflows a float; the exact integer path must still give a sensible number.
    p = mcnemar_exact_p(*_arms(1400, 1600, 0, 0))
    assert 0.0 < p < 1e-3


def test_mcnemar_matches_scipy_binomtest() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(25):
        b, c = (int(x) for x in rng.integers(0, 60, size=2))
        if b + c == 0:
            continue
        ours = mcnemar_exact_p(*_arms(b, c))
        theirs = stats.binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue
        assert ours == pytest.approx(min(1.0, theirs), rel=1e-9), (b, c)


def test_mcnemar_rejects_mismatched_and_non_binary() -> None:
    with pytest.raises(ValueError, match="same number"):
        mcnemar_exact_p(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="boolean"):
        mcnemar_exact_p(np.array([0.5, 1.0]), np.array([1.0, 0.0]))


# --- paired bootstrap ---------------------------------------------------------


def test_bootstrap_contains_true_difference() -> None:
    rng = np.random.default_rng(0)
    n = 400
    base = rng.random(n) < 0.5
    # Modulation fixes ~40% of wrong answers and breaks none: true diff ≈ +0.2.
    mod = base | (rng.random(n) < 0.4)
    ci = paired_bootstrap_ci(base, mod, n_boot=2000, seed=3)
    assert isinstance(ci, CI)
    assert ci.estimate == pytest.approx(mod.mean() - base.mean())
    assert ci.low < 0.2 < ci.high
    assert ci.low < ci.estimate < ci.high
    assert 0.0 < ci.low  # a clear improvement is clearly positive
    assert ci.high - ci.low < 0.15  # ~4 standard errors wide, not vacuous


def test_bootstrap_degenerate_when_all_pairs_shift_equally() -> None:
    base = np.zeros(50, dtype=bool)
    mod = np.ones(50, dtype=bool)
    assert paired_bootstrap_ci(base, mod, n_boot=500) == CI(1.0, 1.0, 1.0)
    same = np.array([True, False, True, True])
    assert paired_bootstrap_ci(same, same, n_boot=500) == CI(0.0, 0.0, 0.0)
    probs = np.linspace(0.1, 0.6, 20)
    ci = paired_bootstrap_ci(probs, probs + 0.25, n_boot=200)
    assert ci.low == ci.high == pytest.approx(0.25)


def test_bootstrap_deterministic_per_seed() -> None:
    rng = np.random.default_rng(7)
    base, mod = rng.random(80) < 0.5, rng.random(80) < 0.6
    a = paired_bootstrap_ci(base, mod, n_boot=300, seed=11)
    assert a == paired_bootstrap_ci(base, mod, n_boot=300, seed=11)
    assert a != paired_bootstrap_ci(base, mod, n_boot=300, seed=12)


def test_bootstrap_chunking_matches_normal_approximation() -> None:
    # n large enough that replicates come in many chunks; the interval's width should
    # match the paired normal approximation 2·1.96·sd(d)/sqrt(n).
    rng = np.random.default_rng(5)
    n = 20_000
    base = rng.random(n) < 0.6
    mod = np.where(rng.random(n) < 0.9, base, ~base)
    d = mod.astype(float) - base.astype(float)
    ci = paired_bootstrap_ci(base, mod, n_boot=400, seed=0)
    expected = 2 * 1.96 * d.std(ddof=1) / np.sqrt(n)
    assert ci.high - ci.low == pytest.approx(expected, rel=0.2)


def test_bootstrap_argument_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_ci(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap_ci(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        paired_bootstrap_ci(np.ones(2), np.ones(2), alpha=1.5)


# --- summaries ----------------------------------------------------------------


@dataclass
class Rec:
    qid: str
    correct: bool
    gold_prob: float
    category: str | None


def _records() -> list[dict]:
    return [
        {"qid": "q1", "correct": True, "gold_prob": 0.9, "category": "color"},
        {"qid": "q2", "correct": False, "gold_prob": 0.2, "category": "color"},
        {"qid": "q3", "correct": True, "gold_prob": 0.7, "category": "spatial"},
        {"qid": "q4", "correct": True, "gold_prob": 0.6, "category": "color"},
    ]


def test_summarize_dicts_and_metrics() -> None:
    s = summarize(_records())
    assert s.n == 4
    assert s.accuracy == pytest.approx(0.75)
    assert s.gold_prob == pytest.approx(0.6)
    assert list(s.groups) == ["color", "spatial"]
    assert s.groups["color"].n == 3
    assert s.groups["color"].accuracy == pytest.approx(2 / 3)
    assert s.groups["color"].gold_prob == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    m = s.as_metrics("eval.val")
    assert m["eval.val.accuracy"] == pytest.approx(0.75)
    assert m["eval.val.gold_prob"] == pytest.approx(0.6)
    assert m["eval.val.accuracy.color"] == pytest.approx(2 / 3)
    assert m["eval.val.accuracy.spatial"] == 1.0
    assert m["eval.val.n"] == 4.0


def test_summarize_objects_and_missing_category() -> None:
    recs = [Rec("a", True, 0.5, None), Rec("b", False, 0.1, None)]
    s = summarize(recs)
    assert list(s.groups) == ["uncategorized"]
    assert s.accuracy == 0.5


def test_summarize_errors_name_the_record() -> None:
    with pytest.raises(ValueError, match="no records"):
        summarize([])
    with pytest.raises(ValueError, match="record 1 has no field 'gold_prob'"):
        summarize([{"correct": True, "gold_prob": 0.5}, {"correct": False}])
    with pytest.raises(ValueError, match="record 0: gold_prob"):
        summarize([{"correct": True, "gold_prob": float("nan")}])


# --- compare_arms -------------------------------------------------------------


def test_compare_arms_pairs_by_qid_and_names_metrics() -> None:
    base = _records()
    # Same questions, different order; q2 fixed, q3 broken, q1/q4 unchanged.
    mod = [
        {"qid": "q4", "correct": True, "gold_prob": 0.7, "category": "color"},
        {"qid": "q3", "correct": False, "gold_prob": 0.3, "category": "spatial"},
        {"qid": "q2", "correct": True, "gold_prob": 0.8, "category": "color"},
        {"qid": "q1", "correct": True, "gold_prob": 0.95, "category": "color"},
    ]
    cmp = compare_arms(base, mod, n_boot=200, seed=0)
    assert cmp.n == 4
    assert cmp.accuracy_baseline == pytest.approx(0.75)
    assert cmp.accuracy_modulated == pytest.approx(0.75)
    assert (cmp.discordant_b, cmp.discordant_c) == (1, 1)
    assert cmp.mcnemar_p == 1.0
    assert cmp.gold_prob_modulated == pytest.approx((0.7 + 0.3 + 0.8 + 0.95) / 4)
    assert cmp.categories["color"].accuracy_modulated == 1.0
    assert cmp.categories["spatial"].accuracy_modulated == 0.0
    assert cmp.diff_ci.low <= 0.0 <= cmp.diff_ci.high

    m = cmp.as_metrics("eval.test")
    assert set(m) == {
        "eval.test.accuracy.baseline",
        "eval.test.accuracy.modulated",
        "eval.test.accuracy.diff_ci_low",
        "eval.test.accuracy.diff_ci_high",
        "eval.test.mcnemar_p",
        "eval.test.gold_prob.baseline",
        "eval.test.gold_prob.modulated",
        "eval.test.n",
        "eval.test.accuracy.baseline.color",
        "eval.test.accuracy.modulated.color",
        "eval.test.accuracy.baseline.spatial",
        "eval.test.accuracy.modulated.spatial",
    }
    assert m["eval.test.accuracy.baseline.color"] == pytest.approx(2 / 3)
    assert m["eval.test.n"] == 4.0
    assert all(isinstance(v, float) for v in m.values())


def test_compare_arms_significant_improvement() -> None:
    base = [{"qid": str(i), "correct": False, "gold_prob": 0.1, "category": "c"} for i in range(12)]
    mod = [{**r, "correct": True, "gold_prob": 0.6} for r in base]
    cmp = compare_arms(base, mod, n_boot=100)
    assert cmp.mcnemar_p == pytest.approx(2 / 2**12)
    assert cmp.diff_ci == CI(1.0, 1.0, 1.0)


def test_compare_arms_rejects_unpaired_or_duplicate_questions() -> None:
    base = _records()
    with pytest.raises(ValueError, match=r"missing from the modulated arm: q4"):
        compare_arms(base, base[:3])
    with pytest.raises(ValueError, match="duplicate qid 'q1'"):
        compare_arms(base, base + base[:1])
