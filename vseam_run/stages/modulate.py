"""Stage 5: choose a modulation (scale matrix), evaluate it under the spec's protocol, with controls.

Takes the head-search result and the split items; returns the chosen edits and the test set
(for ablation validation). What it computes is persisted at once through a :class:`Sink`
the pipeline provides, so this module knows nothing of the store.

Choice (never on test) is the policy's own (``vseam_run/modulation/``, one module per policy):
each fits on the search split and/or chooses its parameters on val and returns an intervention.

Evaluation (``evaluate.protocol``): ``held_out`` on the test split, ``in_sample`` on the
search split (the questions the heads were scored on, as the released code evaluated), or
``both`` with the two gains side by side. Every evaluated set also gets the random-head
control: the same change on random heads (for scale policies the same scale values
permuted onto random heads), ``control_draws`` seeded draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vseam_run import evaluate, report
from vseam_run.errors import VseamError
from vseam_run.heads import HeadEdit
from vseam_run.modulation import (  # noqa: F401  (state_*: re-exported for the pipeline's ledger)
    Chosen, FitContext, Intervention, ScaleIntervention, policy_for, state_from_saved, state_to_saved,
)
from vseam_run.modulation.learned import edits_for  # noqa: F401  (re-exported: stage.edits_for)
from vseam_run.scoring import Item, ScoredSet
from vseam_run.search import SearchResult


@dataclass
class Sink:
    """Where the stage's results go (the pipeline's store, metrics and log)."""

    record: Callable[[dict[str, float]], None]
    document: Callable[[str, Any], None]
    question_rows: Callable[[str, list[dict]], None]
    artifact: Callable[[str, Path], None]
    log: Callable[[Any], None]
    art_dir: Path
    label: str = ""  # spec name, run id and seed, for figure titles


@dataclass
class Matcher:
    """The run's answer-matching rule, applied to every row set before it is counted."""

    rule: str = "first_token"
    canonical: dict[str, str] = field(default_factory=dict)  # 'yes'/'no' → the token each is scored by

    @classmethod
    def for_model(cls, vlm, rule: str) -> "Matcher":
        # Under answer_match: generate every choice on val (and the random-head control) uses the
        # first-token rule; generated answers are judged in stages/generated.py.
        rule = "first_token" if rule == "generate" else rule
        ids = vlm.answer_token_ids(list(evaluate.YES_NO))
        tokens = {w: vlm.tokenizer.convert_ids_to_tokens(i) for w, i in zip(evaluate.YES_NO, ids) if i is not None}
        return cls(rule, tokens)

    def rows(self, rows: list[dict]) -> list[dict]:
        return evaluate.apply_answer_match(rows, self.rule)

    def accuracy(self, rows: list[dict]) -> float:
        judged = self.rows(rows)
        return sum(r["correct"] for r in judged) / max(len(judged), 1)


@dataclass
class Settings:
    """What the stage needs from the spec (the pipeline reads the YAML, not this module)."""

    policy: Any  # a spec policy model (LinearPolicy | PaperPolicy | TopKPolicy | LearnedPolicy | NonePolicy) or None
    protocol: str = "held_out"
    answer_match: str = "first_token"
    control_draws: int = 5
    bootstrap: int = 2000
    batch_size: int = 16
    seed: int = 0
    name: str = ""
    stream: bool = False  # sets encoded again at each use, one batch in memory at a time (spec `stream`)
    max_new_tokens: int = 16  # answer_match generate
    answer_rule: str = "gqa"  # answer_match generate: the benchmark rule of the set (vseam_run.answers)


@dataclass
class Outcome:
    """What later stages need: the intervention (to apply elsewhere) and the encoded test set."""

    intervention: Intervention
    test: ScoredSet

    @property
    def scales(self) -> torch.Tensor:
        return self.intervention.scales  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Choosing the intervention (the policies live in vseam_run/modulation/, one module each)
# ---------------------------------------------------------------------------


class SplitSets:
    """Split items encoded on first use (val and search are only needed by some policies)."""

    def __init__(self, vlm, by_split: dict[str, list[Item]], batch_size: int, *, stream: bool = False) -> None:
        self.vlm, self.by_split, self.batch_size, self.stream = vlm, by_split, batch_size, stream
        self._cache: dict[str, ScoredSet] = {}

    def get(self, split: str, why: str) -> ScoredSet:
        if split not in self._cache:
            if not self.by_split.get(split):
                raise VseamError(f"{why} needs a non-empty {split} split", hint=f"set data.split.{split} > 0 or use more questions")
            self._cache[split] = ScoredSet(self.vlm, self.by_split[split], self.batch_size, split, stream=self.stream)
        return self._cache[split]


def choose_scales(vlm, result: SearchResult, sets: SplitSets, settings: Settings, matcher: Matcher, sink: Sink) -> Chosen:
    """The policy's intervention; any free parameter is chosen on val (or, for learned, fitted on search)."""
    ctx = FitContext(vlm, result, sets, matcher, sink, settings.seed)
    return policy_for(settings.policy).choose(ctx)


# ---------------------------------------------------------------------------
# Evaluating: baseline vs modulated, the yes/no measures, the random-head control
# ---------------------------------------------------------------------------


@dataclass
class ControlResult:
    """Accuracy gains of the same scale values on random heads, one per seeded draw."""

    gains: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.gains)) if self.gains else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.gains)) if self.gains else float("nan")

    def frac_at_least(self, gain: float) -> float:
        """Share of draws whose gain reaches the policy's (how often chance heads do as well)."""
        return float(np.mean([g >= gain - 1e-12 for g in self.gains])) if self.gains else float("nan")


def compare(scored: ScoredSet, edits: Intervention | dict[int, HeadEdit], prefix: str, label: str, settings: Settings,
            matcher: Matcher, sink: Sink) -> tuple[evaluate.ArmComparison, list[dict]]:
    """Baseline vs modulated on one set: rows stored, paired statistics recorded and printed,
    and for yes/no sets the benchmark measures (precision, recall, F1, yes-ratio)."""
    if settings.answer_match == "generate":
        from vseam_run.stages.generated import GenerateSettings, compare_generated

        return compare_generated(scored, edits, prefix, label, settings, matcher, sink,
                                 GenerateSettings(settings.max_new_tokens, settings.answer_rule))
    base_rows, mod_rows = matcher.rows(scored.run()), matcher.rows(scored.run(edits))
    sink.question_rows(f"{prefix}.baseline", base_rows)
    sink.question_rows(f"{prefix}.modulated", mod_rows)
    cmp = evaluate.compare_arms(base_rows, mod_rows, n_boot=settings.bootstrap, seed=settings.seed)
    sink.record(cmp.as_metrics(prefix))
    sink.document(f"{prefix}.summary", report.comparison_rows(cmp, context={"dataset": label}))
    sink.log("")
    sink.log(report.comparison_table(cmp, title=f"{label}: baseline vs modulated (n = {cmp.n}, answers: {matcher.rule})"))
    yn = evaluate.compare_yes_no(base_rows, mod_rows, matcher.rule, matcher.canonical, n_boot=settings.bootstrap, seed=settings.seed)
    if yn is not None:
        sink.record(yn.as_metrics(prefix))
        sink.document(f"{prefix}.yesno", yn.rows())
        sink.log(report.summary_table(yn.rows(), f"{label}: yes/no measures (positive = yes, answers: {matcher.rule})"))
    return cmp, base_rows


def control(scored: ScoredSet, intervention: Intervention | torch.Tensor, base_rows: list[dict], gain: float, prefix: str,
            settings: Settings, matcher: Matcher, sink: Sink) -> ControlResult | None:
    """The matched random-head control: the same change on random heads (for scale policies, the
    policy's scale values on seeded permutations over heads), gain per draw."""
    if isinstance(intervention, torch.Tensor):
        intervention = ScaleIntervention(intervention)
    if settings.control_draws == 0 or intervention.is_identity():
        return None  # nothing is changed, so a permutation would change nothing either
    base_acc = matcher.accuracy(base_rows)
    rng = np.random.default_rng(settings.seed)
    gains = []
    for _ in range(settings.control_draws):
        drawn = intervention.control(rng)
        gains.append(matcher.accuracy(scored.run(drawn)) - base_acc)
    res = ControlResult(gains)
    sink.record({f"{prefix}.control.draws": float(len(gains)), f"{prefix}.control.gain_mean": res.mean,
                 f"{prefix}.control.gain_sd": res.sd, f"{prefix}.control.frac_at_least_policy": res.frac_at_least(gain)})
    sink.document(f"{prefix}.control", {"gains": gains, "policy_gain": gain})
    sink.log(f"  random-head control ({len(gains)} draws, {intervention.control_label}): gain {res.mean:+.3f} ± {res.sd:.3f}; "
             f"policy {gain:+.3f}; draws reaching it {res.frac_at_least(gain):.2f}")
    return res


_PROTOCOL_SETS = {"held_out": [("test", "eval.test", "held-out test")],
                  "in_sample": [("search", "eval.in_sample", "in-sample (search split)")]}
_PROTOCOL_SETS["both"] = _PROTOCOL_SETS["held_out"] + _PROTOCOL_SETS["in_sample"]


def protocol_sets(protocol: str) -> list[tuple[str, str, str]]:
    """(split, metric prefix, label) of every set the protocol evaluates on."""
    return _PROTOCOL_SETS[protocol]


def choose(vlm, result: SearchResult, sets: SplitSets, settings: Settings, sink: Sink) -> Intervention:
    """The modulation sub-stage: the policy's intervention, recorded with how it was chosen."""
    matcher = Matcher.for_model(vlm, settings.answer_match)
    chosen = choose_scales(vlm, result, sets, settings, matcher, sink)
    iv = chosen.intervention
    sink.document("modulation", {**chosen.params, "answer_match": matcher.rule, "protocol": settings.protocol,
                                 "kind": iv.kind, **iv.describe()})
    sink.record({"modulation.heads_changed": iv.heads_changed()})
    return iv


def evaluate_set(vlm, scored: ScoredSet, intervention: Intervention | torch.Tensor, prefix: str, label: str,
                 settings: Settings, sink: Sink) -> None:
    """One evaluation sub-stage: baseline vs modulated on a set, then its random-head control."""
    if isinstance(intervention, torch.Tensor):
        intervention = ScaleIntervention(intervention)
    matcher = Matcher.for_model(vlm, settings.answer_match)
    cmp, base_rows = compare(scored, intervention, prefix, label, settings, matcher, sink)
    control(scored, intervention, base_rows, cmp.accuracy_diff, prefix, settings, matcher, sink)


def side_by_side(metrics: dict[str, float], intervention: Any, settings: Settings, sink: Sink) -> None:
    """With protocol both: the held-out and in-sample gains in one table (from the recorded metrics,
    so a resumed run that reused both evaluations still gets it)."""
    sets = protocol_sets(settings.protocol)
    if len(sets) < 2:
        return
    rows = [_protocol_row(label, prefix, metrics) for _, prefix, label in sets]
    sink.document("eval.protocols", rows)
    policy = getattr(settings.policy, "policy", "none")
    sink.log(report.summary_table(rows, f"in-sample vs held-out gain — {settings.name} ({policy})"))


def _protocol_row(label: str, prefix: str, m: dict[str, float]) -> dict[str, Any]:
    base, mod = m[f"{prefix}.accuracy.baseline"], m[f"{prefix}.accuracy.modulated"]
    ci = evaluate.CI(m[f"{prefix}.accuracy.diff_ci_low"], m[f"{prefix}.accuracy.diff_ci_high"], mod - base)
    return {"evaluated on": label, "n": int(m[f"{prefix}.n"]), "baseline": base, "modulated": mod, "gain": mod - base,
            "95% CI": ci, "McNemar p": m[f"{prefix}.mcnemar_p"],
            "control gain (mean)": m.get(f"{prefix}.control.gain_mean"), "control sd": m.get(f"{prefix}.control.gain_sd")}


def run(vlm, result: SearchResult, by_split: dict[str, list[Item]], settings: Settings, sink: Sink) -> Outcome:
    """All sub-stages in one go (what the pipeline runs through its ledger, step by step)."""
    if not by_split.get("test"):
        raise VseamError("evaluate: the test split is empty", hint="raise data.split.test or use more questions")
    sets = SplitSets(vlm, by_split, settings.batch_size, stream=settings.stream)
    metrics: dict[str, float] = {}
    tee = Sink(lambda m: (metrics.update(m), sink.record(m)), sink.document, sink.question_rows, sink.artifact,
               sink.log, sink.art_dir)
    intervention = choose(vlm, result, sets, settings, tee)
    for split, prefix, label in protocol_sets(settings.protocol):
        evaluate_set(vlm, sets.get(split, f"evaluate.protocol: {settings.protocol}"), intervention, prefix, label,
                     settings, tee)
    side_by_side(metrics, intervention, settings, tee)
    return Outcome(intervention, sets.get("test", "evaluate"))
