"""Does attribution find the heads that matter most? Attribution against exact on a trained toy model.

`vseam bench search` measures attribution on a random-weight model, where every effect is small
and first order is good. The effects that matter are large ones, and there the gold probability
saturates (issue 20 item 5): this benchmark runs exact search and attribution at both scales
(`prob`, the old first-order estimate, and `logit`, the gold logit difference) on a shipped toy
model's questions of one level, optionally with heads harmed in memory (their o_proj-input slice
multiplied by a factor, a planted harmful head), and reports for each variant:

- recall@10 of exact's top-10 positive and negative lists;
- the score ratio attribution / exact: median over exact's top-10 heads, and for every planted head
  (in the negative list, where a harmful head must show up) with its rank;
- the speed against the batch-1 reference, timed on a subset of the questions and scaled per
  question (the reference's cost is linear in the number of questions).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vseam_run.bench import recall, spearman
from vseam_run.heads import scale_edits, edit_heads
from vseam_run.search import SearchItem, search_heads
from vseam_run.search.scoring import score
from vseam_run.search.strategies import attribution_effects, reference_effects
from vseam_run.vlm import VLM

#: The variants compared: (name, strategy for search_heads or None, attribution scale, offsets).
VARIANTS = (
    ("attribution (prob, first order only)", "prob", None),
    ("attribution (prob, + offsets)", "prob", 4),
    ("attribution (logit, first order only)", "logit", None),
    ("attribution (logit, + offsets) [default]", "logit", 4),
)


@dataclass
class AttributionBench:
    model: str = "toy-llava"
    level: str = "relation"
    questions: int = 96
    reference_questions: int = 8
    harm: dict[tuple[int, int], float] = field(default_factory=dict)  # (layer, head) -> factor
    seed: int = 0
    batch_size: int = 16
    batch_rows: int = 64
    top_k: int = 10


def toy_items(vlm: VLM, level: str, n: int, seed: int) -> list[SearchItem]:
    """`n` toy-world questions of one level from a seed the toy models' training never used."""
    from vseam_run.data import toyworld

    size = vlm.processor.image_processor.crop_size["height"]
    examples = [e for e in toyworld.sample_examples(random.Random(777_000 + seed), 8 * n, size) if e.level == level][:n]
    gold = vlm.answer_token_ids([e.answer for e in examples])
    return [SearchItem(str(i), e.image, e.question, g) for i, (e, g) in enumerate(zip(examples, gold))]


@contextlib.contextmanager
def harmed(vlm: VLM, harm: dict[tuple[int, int], float]):
    """Heads harmed in memory for the block: their o_proj-input slice times the factor (installed
    before any search hook, so an ablation of a harmed head replaces the harmed slice)."""
    if not harm:
        yield
        return
    factors = torch.ones(vlm.num_layers, vlm.num_heads)
    for (l, h), f in harm.items():
        factors[l, h] = f
    with edit_heads(vlm, scale_edits(factors)):
        yield


def _rank(matrix: np.ndarray, head: tuple[int, int]) -> int:
    """1-based rank of `head` in a score matrix, best first (ties by position)."""
    flat = matrix.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    return int(np.flatnonzero(order == head[0] * matrix.shape[1] + head[1])[0]) + 1


def _ratios(est: np.ndarray, exact: np.ndarray, top: list) -> float:
    vals = [est[l, h] / exact[l, h] for l, h, _ in top if exact[l, h] > 0]
    return float(np.median(vals)) if vals else float("nan")


def run_attribution_bench(cfg: AttributionBench, vlm: VLM | None = None, threads: int | None = None) -> dict:
    from vseam_run.registry import get_entry

    if threads:
        torch.set_num_threads(threads)
    vlm = vlm or VLM.load(get_entry(cfg.model), torch.device("cpu"), torch.float32)
    items = toy_items(vlm, cfg.level, cfg.questions, cfg.seed)
    rows = []
    with harmed(vlm, cfg.harm):
        t0 = time.perf_counter()
        sub = items[: cfg.reference_questions]
        reference_effects(vlm, sub, "mean")
        ref_per_q = (time.perf_counter() - t0) / max(len(sub), 1)
        ex = search_heads(vlm, items, strategy="exact", scoring="subset", ablation="mean", top_k=cfg.top_k,
                          batch_size=cfg.batch_size, batch_rows=cfg.batch_rows)
        runs = [("exact", ex.effects, ex.correct, ex.seconds)]
        for name, scale, offsets in VARIANTS:
            t0 = time.perf_counter()
            eff = attribution_effects(vlm, items, "mean", batch_size=cfg.batch_size, batch_rows=cfg.batch_rows,
                                      offset_samples=offsets, scale=scale)
            runs.append((name, eff.effects, eff.correct, time.perf_counter() - t0))
        t0 = time.perf_counter()
        ver = search_heads(vlm, items, strategy="attribution+verify", scoring="subset", ablation="mean", top_k=cfg.top_k,
                           batch_size=cfg.batch_size, batch_rows=cfg.batch_rows)
        runs.append(("attribution+verify", ver.effects, ver.correct, time.perf_counter() - t0))
    em = ex.matrices
    for name, effects, correct, seconds in runs:
        m = score(effects, ex.correct, "subset", cfg.top_k)  # exact's right/wrong split, so matrices compare
        if name == "attribution+verify":
            m = ver.matrices
        row = {
            "name": name, "seconds": round(seconds, 3),
            "speedup_vs_reference": round(ref_per_q * len(items) / seconds, 1),
            "spearman_signed_vs_exact": round(spearman(m.signed, em.signed), 4),
            "recall_top10_positive": recall(m.top_positive[:10], em.top_positive[:10]),
            "recall_top10_negative": recall(m.top_negative[:10], em.top_negative[:10]),
            "ratio_top10_positive": round(_ratios(m.positive, em.positive, em.top_positive[:10]), 3),
            "ratio_top10_negative": round(_ratios(m.negative, em.negative, em.top_negative[:10]), 3),
            "top_positive": [[l, h, round(s, 4)] for l, h, s in m.top_positive[:3]],
            "top_negative": [[l, h, round(s, 4)] for l, h, s in m.top_negative[:3]],
        }
        for (l, h) in cfg.harm:
            row[f"planted L{l}.H{h}"] = {"negative_rank": _rank(m.negative, (l, h)), "score": round(float(m.negative[l, h]), 4),
                                         "exact_score": round(float(em.negative[l, h]), 4),
                                         "ratio": round(float(m.negative[l, h] / em.negative[l, h]), 3) if em.negative[l, h] > 0 else None}
        rows.append(row)
    return {"model": cfg.model, "level": cfg.level, "questions": len(items), "correct": int(ex.correct.sum()),
            "harm": {f"L{l}.H{h}": f for (l, h), f in cfg.harm.items()}, "threads": torch.get_num_threads(),
            "reference_seconds_per_question": round(ref_per_q, 3), "reference_questions": len(sub), "variants": rows}
