"""Statistics for stage 5: accuracy, gold-answer probability, paired intervals and significance.

Pure numpy and the standard library: no model code and no scipy, so the numbers a run
reports can be recomputed from its stored per-question records alone.

Every comparison here is *paired*: the baseline and the modulated model answer the same
questions, so the question-to-question variation cancels. That is why the interval
resamples question indices jointly for both arms, and why significance is McNemar's test
on the discordant pairs rather than a two-proportion test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CI",
    "YES_NO_MEASURES",
    "ArmComparison",
    "MeasureComparison",
    "YesNoComparison",
    "answer_label",
    "apply_answer_match",
    "compare_yes_no",
    "normalize_token",
    "CategoryComparison",
    "GroupStats",
    "Summary",
    "compare_arms",
    "mcnemar_exact_p",
    "paired_bootstrap_ci",
    "summarize",
]

# Bootstrap replicates are drawn in chunks so the index matrix stays around this many
# entries (8 MB of int64) whatever the number of questions.
_BOOT_CHUNK_ELEMENTS = 1 << 20


class CI(NamedTuple):
    """A confidence interval around a point estimate."""

    low: float
    high: float
    estimate: float


# ---------------------------------------------------------------------------
# Input helpers
# ---------------------------------------------------------------------------


def _paired_arrays(base: Any, mod: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both arms as 1-D float arrays of equal, non-zero length (bools become 0/1)."""
    a = np.asarray(base, dtype=np.float64).reshape(-1)
    b = np.asarray(mod, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(
            f"paired arms must have the same number of questions: baseline has {a.size}, "
            f"modulated has {b.size}"
        )
    if a.size == 0:
        raise ValueError("paired arms are empty: need at least one question")
    return a, b


def _paired_bools(base: Any, mod: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both arms as 1-D bool arrays of equal length; rejects values other than 0/1."""
    a = np.asarray(base).reshape(-1)
    b = np.asarray(mod).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(
            f"paired arms must have the same number of questions: baseline has {a.size}, "
            f"modulated has {b.size}"
        )
    for name, arr in (("baseline", a), ("modulated", b)):
        if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} correctness must be boolean (or 0/1)")
    return a.astype(bool), b.astype(bool)


def _get(record: Any, name: str, index: int) -> Any:
    """Read a field from a dict-like record or an object (dataclass, pydantic model)."""
    if isinstance(record, Mapping):
        if name in record:
            return record[name]
    elif hasattr(record, name):
        return getattr(record, name)
    raise ValueError(f"record {index} has no field {name!r}")


# ---------------------------------------------------------------------------
# Paired bootstrap and McNemar
# ---------------------------------------------------------------------------


def paired_bootstrap_ci(
    base_correct: np.ndarray,
    mod_correct: np.ndarray,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> CI:
    """Percentile bootstrap interval for mean(mod) − mean(base) over paired questions.

    Each replicate draws question indices with replacement and uses the *same* indices
    for both arms, so it resamples per-question differences. Works for correctness
    (bool) and for any per-question score such as the gold-answer probability.

    The result is deterministic for a given ``seed`` and input length: replicates are
    drawn in fixed-size chunks from one generator.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    a, b = _paired_arrays(base_correct, mod_correct)
    diff = b - a
    n = diff.size
    estimate = float(diff.mean())

    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // n)
    stats = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = diff[idx].mean(axis=1)

    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    # When every difference is the same value the interval is that value; floating-point
    # summation could otherwise put it one ulp off the estimate.
    if np.all(diff == diff[0]):
        low = high = float(diff[0])
    return CI(float(low), float(high), estimate)


def _binom_half_lower_tail(n: int, k: int) -> float:
    """P[Binom(n, 1/2) <= k], computed exactly with integers and rounded once."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    # Walk C(n, i) upward with the exact recurrence C(n, i+1) = C(n, i)(n−i)/(i+1);
    # every step divides exactly, so nothing is rounded until the final division.
    term = 1
    total = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    # int / int is correctly rounded in Python even when 2**n has thousands of digits.
    return total / (1 << n)


def mcnemar_exact_p(base_correct: np.ndarray, mod_correct: np.ndarray) -> float:
    """Exact two-sided McNemar p-value for paired correctness.

    b = questions the baseline gets right and the modulated model wrong, c = the
    reverse. Under the null each discordant pair is a fair coin, so
    p = min(1, 2 · P[Binom(b + c, 1/2) <= min(b, c)]), and p = 1 with no discordant pairs.
    """
    a, m = _paired_bools(base_correct, mod_correct)
    b = int(np.count_nonzero(a & ~m))
    c = int(np.count_nonzero(~a & m))
    if b + c == 0:
        return 1.0
    return min(1.0, 2.0 * _binom_half_lower_tail(b + c, min(b, c)))


# ---------------------------------------------------------------------------
# Summaries of one arm
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupStats:
    """Accuracy and mean gold-answer probability over a group of questions."""

    n: int
    accuracy: float
    gold_prob: float


@dataclass(frozen=True)
class Summary:
    """One arm's results overall and per group (category by default)."""

    overall: GroupStats
    groups: dict[str, GroupStats] = field(default_factory=dict)
    by: str = "category"

    @property
    def n(self) -> int:
        return self.overall.n

    @property
    def accuracy(self) -> float:
        return self.overall.accuracy

    @property
    def gold_prob(self) -> float:
        return self.overall.gold_prob

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metric names for the run registry, e.g. ``{prefix}.accuracy.color``."""
        out: dict[str, float] = {
            f"{prefix}.accuracy": self.overall.accuracy,
            f"{prefix}.gold_prob": self.overall.gold_prob,
            f"{prefix}.n": float(self.overall.n),
        }
        for name, g in self.groups.items():
            out[f"{prefix}.accuracy.{name}"] = g.accuracy
            out[f"{prefix}.gold_prob.{name}"] = g.gold_prob
            out[f"{prefix}.n.{name}"] = float(g.n)
        return out


def _group_key(record: Any, by: str, index: int) -> str:
    """The group a record belongs to; a missing/None group is 'uncategorized', not an error,
    because some sources (POPE) have no categories."""
    value = record.get(by) if isinstance(record, Mapping) else getattr(record, by, None)
    return "uncategorized" if value is None else str(value)


def _stats(correct: np.ndarray, gold_prob: np.ndarray) -> GroupStats:
    return GroupStats(int(correct.size), float(correct.mean()), float(gold_prob.mean()))


def _columns(records: Sequence[Any], by: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Correctness, gold probabilities and group names of a record list, validated."""
    correct = np.empty(len(records), dtype=bool)
    gold = np.empty(len(records), dtype=np.float64)
    groups: list[str] = []
    for i, rec in enumerate(records):
        correct[i] = bool(_get(rec, "correct", i))
        p = _get(rec, "gold_prob", i)
        if p is None or not math.isfinite(float(p)):
            raise ValueError(f"record {i}: gold_prob must be a finite number, got {p!r}")
        gold[i] = float(p)
        groups.append(_group_key(rec, by, i))
    return correct, gold, groups


def _group_indices(groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Indices per group, groups sorted by name so metric order is stable across runs."""
    by_name: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_name.setdefault(g, []).append(i)
    return {g: np.asarray(by_name[g]) for g in sorted(by_name)}


def summarize(records: Iterable[Any], by: str = "category") -> Summary:
    """Accuracy, mean gold probability and count, overall and per ``by`` group.

    ``records`` are dicts or objects with ``correct`` (bool), ``gold_prob`` (float) and
    the ``by`` field (default ``category``).
    """
    recs = list(records)
    if not recs:
        raise ValueError("summarize: no records (the split is empty)")
    correct, gold, groups = _columns(recs, by)
    per_group = {g: _stats(correct[ix], gold[ix]) for g, ix in _group_indices(groups).items()}
    return Summary(overall=_stats(correct, gold), groups=per_group, by=by)


# ---------------------------------------------------------------------------
# Baseline vs modulated
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryComparison:
    """Baseline vs modulated on one category of questions."""

    n: int
    accuracy_baseline: float
    accuracy_modulated: float
    diff_ci: CI
    mcnemar_p: float


@dataclass(frozen=True)
class ArmComparison:
    """Baseline vs modulated over the same questions, paired by question id.

    ``discordant_b``: right at baseline, wrong after modulation; ``discordant_c``: the
    reverse. ``diff_ci`` is the ``1 − alpha`` interval for accuracy (modulated − baseline).
    """

    n: int
    accuracy_baseline: float
    accuracy_modulated: float
    gold_prob_baseline: float
    gold_prob_modulated: float
    diff_ci: CI
    mcnemar_p: float
    discordant_b: int
    discordant_c: int
    categories: dict[str, CategoryComparison] = field(default_factory=dict)
    alpha: float = 0.05

    @property
    def accuracy_diff(self) -> float:
        return self.accuracy_modulated - self.accuracy_baseline

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Registry metric names, e.g. for prefix ``eval.test``: ``eval.test.accuracy.baseline``,
        ``eval.test.accuracy.modulated``, ``eval.test.accuracy.diff_ci_low``/``_high``,
        ``eval.test.mcnemar_p``, ``eval.test.gold_prob.baseline``/``.modulated``,
        ``eval.test.n`` and ``eval.test.accuracy.{baseline,modulated}.<category>``."""
        out: dict[str, float] = {
            f"{prefix}.accuracy.baseline": self.accuracy_baseline,
            f"{prefix}.accuracy.modulated": self.accuracy_modulated,
            f"{prefix}.accuracy.diff_ci_low": self.diff_ci.low,
            f"{prefix}.accuracy.diff_ci_high": self.diff_ci.high,
            f"{prefix}.mcnemar_p": self.mcnemar_p,
            f"{prefix}.gold_prob.baseline": self.gold_prob_baseline,
            f"{prefix}.gold_prob.modulated": self.gold_prob_modulated,
            f"{prefix}.n": float(self.n),
        }
        for name, cat in self.categories.items():
            out[f"{prefix}.accuracy.baseline.{name}"] = cat.accuracy_baseline
            out[f"{prefix}.accuracy.modulated.{name}"] = cat.accuracy_modulated
        return out


def _index_by_key(records: Sequence[Any], key: str, arm: str) -> dict[str, int]:
    """Map question id → position, refusing duplicates (pairing would be ambiguous)."""
    index: dict[str, int] = {}
    for i, rec in enumerate(records):
        qid = str(_get(rec, key, i))
        if qid in index:
            raise ValueError(f"{arm} records: duplicate {key} {qid!r} (records {index[qid]} and {i})")
        index[qid] = i
    return index


def _missing_message(arm: str, missing: set[str]) -> str:
    shown = ", ".join(sorted(missing)[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"{len(missing)} question(s) missing from the {arm} arm: {shown}{more}"


def compare_arms(
    base_records: Iterable[Any],
    mod_records: Iterable[Any],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    key: str = "qid",
    by: str = "category",
) -> ArmComparison:
    """Pair baseline and modulated records by ``key`` and compare them.

    Both arms must cover exactly the same questions: a question answered by one arm
    only would bias the paired statistics, so that is an error, not a silent drop.
    Pairs are ordered as in ``base_records`` (bootstrap draws depend on order). The
    category of a pair is taken from the baseline record.
    """
    base = list(base_records)
    mod = list(mod_records)
    if not base:
        raise ValueError("compare_arms: no baseline records")
    base_ix = _index_by_key(base, key, "baseline")
    mod_ix = _index_by_key(mod, key, "modulated")
    problems = []
    if missing := set(base_ix) - set(mod_ix):
        problems.append(_missing_message("modulated", missing))
    if extra := set(mod_ix) - set(base_ix):
        problems.append(_missing_message("baseline", extra))
    if problems:
        raise ValueError("compare_arms: arms do not cover the same questions; " + "; ".join(problems))

    mod_aligned = [mod[mod_ix[q]] for q in base_ix]  # dicts keep insertion order = base order
    b_correct, b_gold, groups = _columns(base, by)
    m_correct, m_gold, _ = _columns(mod_aligned, by)

    categories = {
        g: CategoryComparison(
            n=int(ix.size),
            accuracy_baseline=float(b_correct[ix].mean()),
            accuracy_modulated=float(m_correct[ix].mean()),
            diff_ci=paired_bootstrap_ci(b_correct[ix], m_correct[ix], n_boot=n_boot, alpha=alpha, seed=seed),
            mcnemar_p=mcnemar_exact_p(b_correct[ix], m_correct[ix]),
        )
        for g, ix in _group_indices(groups).items()
    }
    return ArmComparison(
        n=len(base),
        accuracy_baseline=float(b_correct.mean()),
        accuracy_modulated=float(m_correct.mean()),
        gold_prob_baseline=float(b_gold.mean()),
        gold_prob_modulated=float(m_gold.mean()),
        diff_ci=paired_bootstrap_ci(b_correct, m_correct, n_boot=n_boot, alpha=alpha, seed=seed),
        mcnemar_p=mcnemar_exact_p(b_correct, m_correct),
        discordant_b=int(np.count_nonzero(b_correct & ~m_correct)),
        discordant_c=int(np.count_nonzero(~b_correct & m_correct)),
        categories=categories,
        alpha=alpha,
    )


# ---------------------------------------------------------------------------
# Answer matching and the yes/no benchmarks' own measures (POPE, GQA yes/no)
# ---------------------------------------------------------------------------

AnswerMatch = str  # "first_token" | "variants"
YES_NO = ("yes", "no")
# Markers tokenizers put before a word that follows a space (SentencePiece, byte-level BPE).
_SPACE_MARKERS = "▁Ġ "


def normalize_token(token: str) -> str:
    """A predicted token as a bare lower-case word: leading-space markers and spaces stripped."""
    return token.lstrip(_SPACE_MARKERS).strip().lower()


def answer_label(pred: str, rule: AnswerMatch, canonical: Mapping[str, str] | None = None) -> str:
    """'yes', 'no' or 'other' for a predicted token under an answer-matching rule.

    ``first_token``: the prediction is yes (no) only if it is exactly the token the gold
    answer yes (no) is scored by — ``canonical`` maps 'yes'/'no' to those token strings.
    ``variants``: any case or leading-space variant of yes / no counts.
    """
    if rule == "variants":
        word = normalize_token(pred)
        return word if word in YES_NO else "other"
    if rule != "first_token":
        raise ValueError(f"unknown answer_match {rule!r}; expected 'first_token' or 'variants'")
    if canonical is None:
        raise ValueError("answer_match first_token needs the canonical yes/no tokens")
    for word in YES_NO:
        if pred == canonical.get(word):
            return word
    return "other"


def is_yes_no(gold: str) -> bool:
    return gold.strip().lower() in YES_NO


def apply_answer_match(rows: Sequence[Mapping[str, Any]], rule: AnswerMatch) -> list[dict[str, Any]]:
    """Rows with ``correct`` decided by ``rule`` (copies; the input is left alone).

    ``first_token`` keeps the scorer's rule (argmax == the gold answer's first token).
    ``variants`` re-decides yes/no questions only: correct when the predicted token is any
    case / leading-space variant of the gold word; other questions keep the first-token rule.
    Each row's ``extra`` gets ``answer_match`` so stored records say which rule judged them.
    """
    if rule not in ("first_token", "variants"):
        raise ValueError(f"unknown answer_match {rule!r}; expected 'first_token' or 'variants'")
    out = []
    for r in rows:
        row = dict(r, extra={**(r.get("extra") or {}), "answer_match": rule})
        if rule == "variants" and is_yes_no(str(r["gold"])):
            row["correct"] = normalize_token(str(r["pred"])) == str(r["gold"]).strip().lower()
        out.append(row)
    return out


YES_NO_MEASURES = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def _yes_no_stats(gold_yes: np.ndarray, pred_yes: np.ndarray, pred_no: np.ndarray, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The measures over the rows of ``idx`` (``[replicates, n]``; all rows when None), vectorised.

    Positive class = yes. 'other' predictions are neither yes nor no: wrong for accuracy,
    a missed yes for recall. Undefined ratios (no predicted yes, no gold yes) are NaN.
    """
    if idx is None:
        idx = np.arange(gold_yes.size)[None, :]
    g, py, pn = gold_yes[idx], pred_yes[idx], pred_no[idx]
    n = idx.shape[1]
    tp = (g & py).sum(1).astype(np.float64)
    fp = (~g & py).sum(1).astype(np.float64)
    fn = (g & ~py).sum(1).astype(np.float64)
    tn = (~g & pn).sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1, "yes_ratio": (tp + fp) / n}


@dataclass(frozen=True)
class MeasureComparison:
    """One yes/no measure, baseline vs modulated, each with a bootstrap interval, and their difference."""

    baseline: CI
    modulated: CI
    diff: CI


@dataclass(frozen=True)
class YesNoComparison:
    """POPE-style measures, overall and per split (category), baseline vs modulated."""

    n: int
    rule: str
    measures: dict[str, MeasureComparison]
    groups: dict[str, "YesNoComparison"] = field(default_factory=dict)
    other_baseline: int = 0
    other_modulated: int = 0

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}.yesno.{measure}.{baseline,modulated}`` plus ``…diff_ci_low/high``; per group
        ``{prefix}.yesno.{group}.{measure}.{baseline,modulated}``."""
        out: dict[str, float] = {f"{prefix}.yesno.n": float(self.n),
                                 f"{prefix}.yesno.other.baseline": float(self.other_baseline),
                                 f"{prefix}.yesno.other.modulated": float(self.other_modulated)}
        for name, m in self.measures.items():
            out[f"{prefix}.yesno.{name}.baseline"] = m.baseline.estimate
            out[f"{prefix}.yesno.{name}.modulated"] = m.modulated.estimate
            out[f"{prefix}.yesno.{name}.diff_ci_low"] = m.diff.low
            out[f"{prefix}.yesno.{name}.diff_ci_high"] = m.diff.high
        for group, g in self.groups.items():
            for name, m in g.measures.items():
                out[f"{prefix}.yesno.{group}.{name}.baseline"] = m.baseline.estimate
                out[f"{prefix}.yesno.{group}.{name}.modulated"] = m.modulated.estimate
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Table rows: one per (group, measure), groups first, then ``all``."""
        out = []
        for group, comp in [*self.groups.items(), ("all", self)]:
            for name, m in comp.measures.items():
                out.append({"split": group, "n": comp.n, "measure": name, "baseline": m.baseline.estimate,
                            "baseline 95% CI": m.baseline, "modulated": m.modulated.estimate,
                            "modulated 95% CI": m.modulated, "Δ": m.diff.estimate, "Δ 95% CI": m.diff})
        return out


def _interval(point: float, stats: np.ndarray, alpha: float) -> CI:
    finite = stats[np.isfinite(stats)]
    if finite.size == 0 or not math.isfinite(point):
        return CI(math.nan, math.nan, point)
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return CI(float(low), float(high), point)


def _yes_no_one(gold_yes, base_labels, mod_labels, n_boot, seed, alpha, rule) -> YesNoComparison:
    arrays = [(lab == "yes", lab == "no") for lab in (base_labels, mod_labels)]
    points = [_yes_no_stats(gold_yes, py, pn) for py, pn in arrays]
    idx = np.random.default_rng(seed).integers(0, gold_yes.size, size=(n_boot, gold_yes.size))
    boots = [_yes_no_stats(gold_yes, py, pn, idx) for py, pn in arrays]
    measures = {}
    for name in YES_NO_MEASURES:
        pb, pm = float(points[0][name][0]), float(points[1][name][0])
        measures[name] = MeasureComparison(
            _interval(pb, boots[0][name], alpha), _interval(pm, boots[1][name], alpha),
            _interval(pm - pb, boots[1][name] - boots[0][name], alpha),
        )
    return YesNoComparison(int(gold_yes.size), rule, measures,
                           other_baseline=int((base_labels == "other").sum()), other_modulated=int((mod_labels == "other").sum()))


def compare_yes_no(
    base_rows: Sequence[Mapping[str, Any]],
    mod_rows: Sequence[Mapping[str, Any]],
    rule: AnswerMatch,
    canonical: Mapping[str, str] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    by: str = "category",
) -> YesNoComparison | None:
    """Accuracy, precision, recall, F1 and yes-ratio (positive class: yes), baseline vs modulated.

    Only for sets whose every gold answer is yes or no (POPE, GQA yes/no files, the toy
    world); returns None otherwise. Predictions are labelled by :func:`answer_label` under
    ``rule``. Intervals: percentile bootstrap over questions, the same draws for both arms
    (so the difference is paired); per ``by`` group (POPE's random / popular / adversarial
    splits) when there is more than one group.
    """
    base, mod = list(base_rows), list(mod_rows)
    if not base or not all(is_yes_no(str(r["gold"])) for r in base):
        return None
    mod_by = {r["qid"]: r for r in mod}
    if set(mod_by) != {r["qid"] for r in base}:
        raise ValueError("compare_yes_no: arms do not cover the same questions")
    gold_yes = np.array([str(r["gold"]).strip().lower() == "yes" for r in base])
    base_lab = np.array([answer_label(str(r["pred"]), rule, canonical) for r in base])
    mod_lab = np.array([answer_label(str(mod_by[r["qid"]]["pred"]), rule, canonical) for r in base])
    overall = _yes_no_one(gold_yes, base_lab, mod_lab, n_boot, seed, alpha, rule)
    groups = _group_indices([_group_key(r, by, i) for i, r in enumerate(base)])
    if len(groups) > 1:
        per = {g: _yes_no_one(gold_yes[ix], base_lab[ix], mod_lab[ix], n_boot, seed, alpha, rule) for g, ix in groups.items()}
        overall = YesNoComparison(overall.n, rule, overall.measures, per, overall.other_baseline, overall.other_modulated)
    return overall
