"""Stage 5: choose a modulation (scale matrix), evaluate it under the spec's protocol, with controls.

Takes the head-search result and the split items; returns the chosen edits and the test set
(for ablation validation). What it computes is persisted at once through a :class:`Sink`
the pipeline provides, so this module knows nothing of the store.

Choice (never on test):
  * ``linear`` — λ from its grid on val (or fixed);
  * ``paper`` — K and λ from their grids on val (or fixed);
  * ``topk`` — fixed k, α, β;
  * ``learned`` — scales fitted on the search split, early-stopped on val.

Evaluation (``evaluate.protocol``): ``held_out`` on the test split, ``in_sample`` on the
search split (the questions the heads were scored on, as the released code evaluated), or
``both`` with the two gains side by side. Every evaluated set also gets the random-head
control: the same scale values permuted onto random heads, ``control_draws`` seeded draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vseam_run import dist, evaluate, fmt, modulate, report
from vseam_run.errors import VseamError
from vseam_run.heads import HeadEdit
from vseam_run.learned import LearnedScales, edits_for, fit_scales
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
class Chosen:
    """The scale matrix a policy settled on and the parameters that produced it."""

    scales: torch.Tensor
    params: dict[str, Any]


@dataclass
class Outcome:
    """What later stages need: the scales, the edits to apply elsewhere and the encoded test set."""

    scales: torch.Tensor
    edits: dict[int, HeadEdit]
    test: ScoredSet


# ---------------------------------------------------------------------------
# Choosing the scales
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


def _as_scales(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(modulate._to_numpy(x), dtype=np.float32))


def _val_accuracy(val: ScoredSet, matcher: Matcher) -> Callable[[torch.Tensor], float]:
    """Accuracy on val under given scales, each distinct scale matrix evaluated once."""
    seen: dict[bytes, float] = {}

    def acc(scales: torch.Tensor) -> float:
        key = scales.numpy().tobytes()
        if key not in seen:
            seen[key] = matcher.accuracy(val.run(edits_for(scales)))
        return seen[key]

    return acc


def choose_scales(vlm, result: SearchResult, sets: SplitSets, settings: Settings, matcher: Matcher, sink: Sink) -> Chosen:
    """The policy's scale matrix; any free parameter is chosen on val (or, for learned, fitted on search)."""
    pol, m = settings.policy, result.matrices
    if pol is None or pol.policy == "none":
        return Chosen(torch.ones(tuple(m.signed.shape)), {"policy": "none"})
    if pol.policy == "topk":
        scales = _as_scales(modulate.topk_scales(m.positive, m.negative, pol.k, pol.alpha, pol.beta))
        return Chosen(scales, {"policy": "topk", "k": pol.k, "alpha": pol.alpha, "beta": pol.beta})
    if pol.policy == "linear":
        return _choose_linear(result, sets, pol, matcher, sink)
    if pol.policy == "paper":
        return _choose_paper(result, sets, pol, matcher, sink)
    if pol.policy == "learned":
        return _fit_learned(vlm, sets, pol, settings, matcher, sink)
    raise ValueError(f"unknown policy {pol.policy!r}")  # pragma: no cover - the spec's union forbids it


def _choose_linear(result: SearchResult, sets: SplitSets, pol, matcher: Matcher, sink: Sink) -> Chosen:
    m = result.matrices
    score = modulate.head_score(m.positive, m.negative, m.signed, pol.score)

    def scales_for(lam: float) -> torch.Tensor:
        return _as_scales(modulate.linear_scales(score, lam, pol.clip[0], pol.clip[1], pol.eps))

    if pol.lam == "auto":
        acc = _val_accuracy(sets.get("val", "modulation.lam: auto"), matcher)
        choice = modulate.select_lambda(pol.grid, lambda l: acc(scales_for(l)))
        lam = choice.best
        sink.document("lambda_selection", [{"lam": p.lam, "val_accuracy": p.val_accuracy} for p in choice.table])
        val_n = len(sets.get("val", "modulation.lam: auto").items)
        sink.artifact("lambda_curve", report.lambda_curve(choice, sink.art_dir / "lambda_curve.png", n=val_n,
                                                          title=f"validation accuracy vs λ — {sink.label}"))
        sink.log("  λ on val: " + ", ".join(f"{p.lam:g}→{fmt.num(p.val_accuracy)}" for p in choice.table) + f"; chose {lam:g}")
    else:
        lam = float(pol.lam)
    sink.record({"modulation.lambda": lam})
    return Chosen(scales_for(lam), {"policy": "linear", "lambda": lam, "score": pol.score, "clip": list(pol.clip)})


def _choose_paper(result: SearchResult, sets: SplitSets, pol, matcher: Matcher, sink: Sink) -> Chosen:
    m = result.matrices

    def scales_for(p: dict[str, float]) -> torch.Tensor:
        return _as_scales(modulate.paper_scales(m.positive, m.negative, int(p["k"]), p["lam"], pol.clip[0], pol.clip[1]))

    ks = pol.k_grid if pol.k == "auto" else [pol.k]
    lams = pol.grid if pol.lam == "auto" else [float(pol.lam)]
    candidates = [{"k": int(k), "lam": float(l)} for k in dict.fromkeys(ks) for l in dict.fromkeys(lams)]
    if len(candidates) > 1:
        acc = _val_accuracy(sets.get("val", "modulation.k / lam: auto"), matcher)
        choice = modulate.select_grid(candidates, lambda p: acc(scales_for(p)), lambda p: (p["lam"], p["k"]))
        best = choice.best
        sink.document("paper_selection", [{**p.params, "val_accuracy": p.val_accuracy} for p in choice.table])
        sink.log("  K, λ on val: " + ", ".join(f"{int(p.params['k'])},{p.params['lam']:g}→{p.val_accuracy:.3f}" for p in choice.table)
                 + f"; chose K = {int(best['k'])}, λ = {best['lam']:g}")
    else:
        best = candidates[0]
    sink.record({"modulation.k": float(best["k"]), "modulation.lambda": best["lam"]})
    return Chosen(scales_for(best), {"policy": "paper", "k": int(best["k"]), "lambda": best["lam"], "clip": list(pol.clip)})


def _fit_learned(vlm, sets: SplitSets, pol, settings: Settings, matcher: Matcher, sink: Sink) -> Chosen:
    search = sets.get("search", "policy: learned")
    val = sets.get("val", "policy: learned (early stopping)")

    def fit_alone() -> LearnedScales:
        # One SGD path cannot be split across ranks: under torchrun rank 0 fits (and scores val)
        # alone and the others receive its scales, instead of every rank repeating the same work.
        with dist.unsharded():
            return fit_scales(
                vlm, search, val, positions=pol.positions, epochs=pol.epochs, patience=pol.patience, lr=pol.lr, l2=pol.l2,
                kl=pol.kl, l1=pol.l1, clip=tuple(pol.clip), seed=settings.seed, accuracy_fn=matcher.accuracy, log=sink.log,
            )

    fit = dist.main_decides(fit_alone)
    sink.document("learned_history", [vars(h) for h in fit.history])
    sink.record({"modulation.learned.best_epoch": float(fit.best_epoch), "modulation.learned.epochs_run": float(len(fit.history) - 1)})
    sink.log(f"  learned scales: kept epoch {fit.best_epoch} of {len(fit.history) - 1} "
             f"(val acc {fit.history[fit.best_epoch].val_accuracy:.3f}); scales in "
             f"[{float(fit.scales.min()):.3f}, {float(fit.scales.max()):.3f}]")
    return Chosen(fit.scales, {"policy": "learned", "positions": pol.positions, "best_epoch": fit.best_epoch,
                               "l2": pol.l2, "kl": pol.kl, "l1": pol.l1, "lr": pol.lr})


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


def compare(scored: ScoredSet, edits: dict[int, HeadEdit], prefix: str, label: str, settings: Settings,
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


def control(scored: ScoredSet, scales: torch.Tensor, base_rows: list[dict], gain: float, prefix: str,
            settings: Settings, matcher: Matcher, sink: Sink) -> ControlResult | None:
    """The policy's scale values on random heads (seeded permutations over heads), gain per draw."""
    if settings.control_draws == 0 or bool(torch.all(scales == 1)):
        return None  # nothing is changed, so a permutation would change nothing either
    base_acc = matcher.accuracy(base_rows)
    rng = np.random.default_rng(settings.seed)
    gains = []
    for _ in range(settings.control_draws):
        perm = torch.as_tensor(modulate.permuted_scales(scales.numpy(), rng))
        gains.append(matcher.accuracy(scored.run(edits_for(perm))) - base_acc)
    res = ControlResult(gains)
    sink.record({f"{prefix}.control.draws": float(len(gains)), f"{prefix}.control.gain_mean": res.mean,
                 f"{prefix}.control.gain_sd": res.sd, f"{prefix}.control.frac_at_least_policy": res.frac_at_least(gain)})
    sink.document(f"{prefix}.control", {"gains": gains, "policy_gain": gain})
    sink.log(f"  random-head control ({len(gains)} draws, same scale values): gain {res.mean:+.3f} ± {res.sd:.3f}; "
             f"policy {gain:+.3f}; draws reaching it {res.frac_at_least(gain):.2f}")
    return res


_PROTOCOL_SETS = {"held_out": [("test", "eval.test", "held-out test")],
                  "in_sample": [("search", "eval.in_sample", "in-sample (search split)")]}
_PROTOCOL_SETS["both"] = _PROTOCOL_SETS["held_out"] + _PROTOCOL_SETS["in_sample"]


def protocol_sets(protocol: str) -> list[tuple[str, str, str]]:
    """(split, metric prefix, label) of every set the protocol evaluates on."""
    return _PROTOCOL_SETS[protocol]


def choose(vlm, result: SearchResult, sets: SplitSets, settings: Settings, sink: Sink) -> torch.Tensor:
    """The modulation sub-stage: the policy's scales, recorded with how they were chosen."""
    matcher = Matcher.for_model(vlm, settings.answer_match)
    chosen = choose_scales(vlm, result, sets, settings, matcher, sink)
    sink.document("modulation", {**chosen.params, "answer_match": matcher.rule, "protocol": settings.protocol,
                                 "scales": chosen.scales.tolist()})
    sink.record({"modulation.heads_changed": float((chosen.scales != 1).reshape(-1).sum())})
    return chosen.scales


def evaluate_set(vlm, scored: ScoredSet, scales: torch.Tensor, prefix: str, label: str, settings: Settings,
                 sink: Sink) -> None:
    """One evaluation sub-stage: baseline vs modulated on a set, then its random-head control."""
    matcher = Matcher.for_model(vlm, settings.answer_match)
    cmp, base_rows = compare(scored, edits_for(scales), prefix, label, settings, matcher, sink)
    control(scored, scales, base_rows, cmp.accuracy_diff, prefix, settings, matcher, sink)


def side_by_side(metrics: dict[str, float], scales: torch.Tensor, settings: Settings, sink: Sink) -> None:
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
    scales = choose(vlm, result, sets, settings, tee)
    for split, prefix, label in protocol_sets(settings.protocol):
        evaluate_set(vlm, sets.get(split, f"evaluate.protocol: {settings.protocol}"), scales, prefix, label, settings, tee)
    side_by_side(metrics, scales, settings, tee)
    return Outcome(scales, edits_for(scales), sets.get("test", "evaluate"))
