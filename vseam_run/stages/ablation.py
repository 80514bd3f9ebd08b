"""Ablation validation: do the heads the search found matter more than random ones?

Zero- (or mean-) ablates the top-k positive heads, the top-k negative heads and k random heads
(`trials` seeded draws) on the test split, and records the accuracy and gold-probability drops,
a document and a bar chart per measure.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from vseam_run import fmt, modulate, report
from vseam_run.heads import ablate_heads_edits
from vseam_run.scoring import ScoredSet, accuracy
from vseam_run.search import SearchResult
from vseam_run.search.scoring import ranking_matrices
from vseam_run.spec import AblationSpec
from vseam_run.stages.context import StageContext


class AblationContext(StageContext, Protocol):
    """A stage's context plus the label of the run's modulation (pipeline._Stages has it)."""

    label: str


def run_ablation(ctx: AblationContext, result: SearchResult, test: ScoredSet, ab: AblationSpec, *, scoring: str, seed: int) -> None:
    """Ablate the found heads and random ones on `test`; record the drops (see the module doc)."""
    H = ctx.vlm.num_heads
    base = test.run()
    base_acc, base_prob = accuracy(base), float(np.mean([r["gold_prob"] for r in base]))

    def drops(heads: list[tuple[int, int]]) -> tuple[float, float]:
        rows = test.run(ablate_heads_edits(heads, H, ab.mode))
        return base_acc - accuracy(rows), base_prob - float(np.mean([r["gold_prob"] for r in rows]))

    pos_rank, neg_rank = ranking_matrices(result.effects, result.correct, scoring)
    pos = [(l, h) for l, h, _ in modulate.top_heads(pos_rank, ab.k)]
    neg = [(l, h) for l, h, _ in modulate.top_heads(neg_rank, ab.k)]
    rng = np.random.default_rng(seed)
    random_drops = [drops(modulate.random_heads(ctx.vlm.num_layers, H, ab.k, rng)) for _ in range(ab.trials)]
    metrics: dict[str, float] = {"ablation.k": ab.k, "ablation.trials": ab.trials}
    results: dict[str, Any] = {}
    for name, heads in (("positive", pos), ("negative", neg)):
        if heads:
            acc_d, prob_d = drops(heads)
            metrics[f"ablation.{name}.accuracy_drop"] = acc_d
            metrics[f"ablation.{name}.gold_prob_drop"] = prob_d
            metrics[f"ablation.{name}.heads"] = len(heads)
            results[name] = {"accuracy_drop": acc_d, "gold_prob_drop": prob_d}
    ra = np.array(random_drops)
    metrics.update({
        "ablation.random.accuracy_drop": float(ra[:, 0].mean()), "ablation.random.accuracy_drop_std": float(ra[:, 0].std()),
        "ablation.random.gold_prob_drop": float(ra[:, 1].mean()), "ablation.random.gold_prob_drop_std": float(ra[:, 1].std()),
    })
    results["random"] = {"accuracy_drop": ra[:, 0].tolist(), "gold_prob_drop": ra[:, 1].tolist()}
    ctx.record(metrics)
    ctx.store.put_document(ctx.run_id, "ablation", {"positive_heads": pos, "negative_heads": neg, "results": results})
    for metric in ("accuracy_drop", "gold_prob_drop"):
        path = report.ablation_bar_chart({k: v[metric] for k, v in results.items()}, ctx.art_dir / f"ablation_{metric}.png",
                                         metric=metric, title=f"zero-ablating {ab.k} heads — {ctx.label}")
        ctx.artifact(f"ablation.{metric}", path)
    def shown(name: str) -> str:
        v = metrics.get(f"ablation.{name}.accuracy_drop")
        return "n/a (no such heads)" if v is None else ("+" if v > fmt.NOISE else "") + fmt.num(v)

    ctx.log(f"  ablation (k={ab.k}), accuracy drop: positive {shown('positive')}, negative {shown('negative')}, "
             f"random {fmt.num(metrics['ablation.random.accuracy_drop'])} ± {fmt.num(metrics['ablation.random.accuracy_drop_std'])}")
