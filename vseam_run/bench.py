"""Head-search benchmark: all four strategies on one random-weight LLaVA-architecture model.

Timings and agreement are measured in one process on the same questions. Half the gold
answers are the model's own argmax (so some questions count as correct and positive heads
exist) and half are random tokens (wrong answers, for negative heads).
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from vseam_run.registry import load_entry_file
from vseam_run.search import STRATEGIES, SearchItem, search_heads
from vseam_run.vlm import VLM
from vseam_run.zoo.build import LLAVA_MODULES, TinyVLMConfig, save, tiny_llava



@dataclass
class BenchModel:
    layers: int = 8
    heads: int = 8
    hidden: int = 256
    image_tokens: int = 64
    text_tokens: int = 20
    questions: int = 16
    seed: int = 0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # average tied ranks
            idx = x == v
            if idx.sum() > 1:
                r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(np.ravel(a)), ranks(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def recall(found: list, truth: list) -> float:
    """Share of the true top list (layer, head) that the other list also contains."""
    t = {(l, h) for l, h, _ in truth}
    if not t:
        return float("nan")
    return len(t & {(l, h) for l, h, _ in found}) / len(t)


def score_ratio(est: np.ndarray, exact: np.ndarray, top: list) -> float:
    """Median over the (layer, head) of `top` of est / exact (heads whose exact score is > 0)."""
    vals = [est[l, h] / exact[l, h] for l, h, _ in top if exact[l, h] > 0]
    return round(float(np.median(vals)), 3) if vals else float("nan")


def build_bench_vlm(cfg: BenchModel, folder: Path) -> VLM:
    """Save a random LLaVA-architecture model and load it back through a registry entry."""
    side = int(round(cfg.image_tokens ** 0.5))
    patch = 4
    words = [f"w{i}" for i in range(200)]
    model_cfg = TinyVLMConfig(
        image_size=side * patch, patch_size=patch, vision_hidden=64, vision_layers=2, vision_heads=4,
        text_hidden=cfg.hidden, text_layers=cfg.layers, text_heads=cfg.heads, text_intermediate=cfg.hidden * 2, seed=cfg.seed,
    )
    model, processor = tiny_llava(words, model_cfg)
    save(model, processor, folder / "ckpt")
    entry = dict(name="bench-llava", path="ckpt", model_class="LlavaForConditionalGeneration", dtype="float32",
                 prompt="<image> {question}", modules=LLAVA_MODULES)
    (folder / "bench.yaml").write_text(yaml.safe_dump(entry))
    return VLM.load(load_entry_file(folder / "bench.yaml"), torch.device("cpu"), torch.float32)


def bench_items(vlm: VLM, cfg: BenchModel) -> list[SearchItem]:
    rng = random.Random(cfg.seed)
    nprng = np.random.default_rng(cfg.seed)
    size = vlm.processor.image_processor.crop_size["height"]
    items = []
    for i in range(cfg.questions):
        img = Image.fromarray(nprng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        words = " ".join(f"w{rng.randrange(200)}" for _ in range(cfg.text_tokens - 1))
        items.append(SearchItem(str(i), img, words, 0))
    # Gold: the model's own answer for even questions (correct), a random token for odd ones.
    for it in items:
        prep = vlm.prepare(vlm.encode([it.image], [it.question]))
        with torch.no_grad():
            top = int(vlm.last_logits(prep).argmax(-1))
        it.gold_id = top if int(it.qid) % 2 == 0 else (top + 1 + rng.randrange(len(vlm.tokenizer) - 1)) % len(vlm.tokenizer)
    return items


def run_bench(cfg: BenchModel, strategies=STRATEGIES, top_k: int = 10, batch_rows: int = 8, batch_size: int = 4,
              threads: int | None = None) -> dict:
    """Time the strategies on one model. The defaults suit a CPU, where small row chunks stay
    in cache (8 rows ran ~25% faster than 64 here); on a GPU use larger ones."""
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        vlm = build_bench_vlm(cfg, Path(tmp))
        items = bench_items(vlm, cfg)
        vlm.self_check(items)  # as in a run: shortcuts are used only once compared with the plain replay
        results = {}
        for s in strategies:
            t0 = time.perf_counter()
            results[s] = search_heads(vlm, items, strategy=s, scoring="subset", ablation="mean", top_k=top_k,
                                      batch_size=batch_size, batch_rows=batch_rows)
            results[s].seconds = time.perf_counter() - t0
    ref, exact = results.get("reference"), results.get("exact")
    rows = []
    for s, r in results.items():
        row = {"name": s, "seconds": round(r.seconds, 4)}
        row["speedup_vs_reference"] = round(ref.seconds / r.seconds, 2) if ref else None
        row["max_abs_diff_vs_reference"] = float(np.abs(r.effects - ref.effects).max()) if ref else None
        if exact:
            row["spearman_vs_exact"] = round(spearman(r.matrices.signed, exact.matrices.signed), 4)
            row["recall_top10_positive"] = recall(r.matrices.top_positive[:10], exact.matrices.top_positive[:10])
            row["recall_top10_negative"] = recall(r.matrices.top_negative[:10], exact.matrices.top_negative[:10])
            # Does it score the heads that matter at their size? Median of score / exact score over
            # exact's top 10 (1.0 = right size; first order on the gold probability ran low here).
            row["ratio_top10_positive"] = score_ratio(r.matrices.positive, exact.matrices.positive, exact.matrices.top_positive[:10])
            row["ratio_top10_negative"] = score_ratio(r.matrices.negative, exact.matrices.negative, exact.matrices.top_negative[:10])
            if r.exact_layers:
                row["exact_layers"] = list(r.exact_layers)
        rows.append(row)
    return {"model": {**asdict(cfg), "architecture": "LlavaForConditionalGeneration (random weights)",
                      "threads": torch.get_num_threads(), "device": "cpu", "batch_size": batch_size, "batch_rows": batch_rows},
            "strategies": rows}


# ---- causal tracing ------------------------------------------------------------------------------


def bench_pairs(vlm: VLM, cfg: BenchModel, n: int) -> list:
    """Clean/edited pairs on the random model: a noise image, and the same with one block
    replaced (a local edit, like a concept edit); targets are the tokens the edit moves most."""
    from vseam_run.trace import TracePair

    rng = random.Random(cfg.seed)
    nprng = np.random.default_rng(cfg.seed)
    size = vlm.processor.image_processor.crop_size["height"]
    pairs = []
    for i in range(n):
        clean = nprng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        edited = clean.copy()
        b = size // 3
        y, x = nprng.integers(0, size - b, 2)
        edited[y : y + b, x : x + b] = nprng.integers(0, 256, (b, b, 3), dtype=np.uint8)
        words = " ".join(f"w{rng.randrange(200)}" for _ in range(rng.randrange(cfg.text_tokens // 2, cfg.text_tokens)))
        im_c, im_e = Image.fromarray(clean), Image.fromarray(edited)
        with torch.no_grad():
            p = vlm.last_logits(vlm.prepare(vlm.encode([im_c, im_e], [words] * 2))).softmax(-1)
        pairs.append(TracePair(str(i), words, im_c, im_e, "", "", int((p[0] - p[1]).argmax()), int((p[1] - p[0]).argmax())))
    return pairs


def run_trace_bench(cfg: BenchModel, pairs: int = 8, reference_pairs: int = 2, batch_size: int = 4, batch_rows: int = 64,
                    threads: int | None = None) -> dict:
    """Time exact and attribution tracing on one random model, exact against the batch-1
    reference on the first `reference_pairs` pairs, and attribution's agreement with exact.

    The model's image projection is scaled ×20 and its LM head ×30: with random weights the
    image barely moves the answer, and agreement measured on effects near zero is noise.
    Every pair and cell counts (no margin).
    """
    from vseam_run.trace import attribution_trace, exact_trace, reference_trace

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        vlm = build_bench_vlm(cfg, Path(tmp))
        with torch.no_grad():
            vlm.model.model.multi_modal_projector.linear_2.weight.mul_(20)
            vlm.lm_head.weight.mul_(30)
        items = bench_pairs(vlm, cfg, pairs)
        # As in a run: shortcuts are used only once compared with the plain replay.
        vlm.self_check([SearchItem(p.qid, p.clean_image, p.question, p.clean_id) for p in items[:3]])
        timed = {}

        def clock(name, fn):
            t0 = time.perf_counter()
            timed[name] = (fn(), time.perf_counter() - t0)

        kw = dict(margin=-1.0)
        clock("exact", lambda: exact_trace(vlm, items, batch_size=batch_size, batch_rows=batch_rows, **kw))
        clock("attribution", lambda: attribution_trace(vlm, items, batch_size=batch_size, **kw))
        sub = items[:reference_pairs]
        if sub:
            clock("reference (subset)", lambda: reference_trace(vlm, sub, **kw))
            clock("exact (subset)", lambda: exact_trace(vlm, sub, batch_size=batch_size, batch_rows=batch_rows, **kw))
    exact, ex_s = timed["exact"]
    cells = np.isfinite(exact.patched)
    rows = []
    for name, (res, secs) in timed.items():
        row = {"name": name, "pairs": len(res.qids), "seconds": round(secs, 4)}
        if name == "attribution":
            att_rec, ex_rec = res.summary()[0], exact.summary()[0]
            ok = np.isfinite(ex_rec)
            row["spearman_cells_vs_exact"] = round(spearman(res.patched[cells], exact.patched[cells]), 4)
            row["spearman_table_vs_exact"] = round(spearman(att_rec[ok], ex_rec[ok]), 4)
            row["recall_top10_cells"] = _top_recall(att_rec, ex_rec, 10)
        if name == "reference (subset)":
            fast = timed["exact (subset)"][0]
            both = np.isfinite(res.patched)
            row["max_abs_diff_vs_exact"] = float(np.abs(res.patched[both] - fast.patched[both]).max())
            row["exact_speedup"] = round(secs / timed["exact (subset)"][1], 2)
        rows.append(row)
    D, P, L, C, G = exact.patched.shape
    return {"model": {**asdict(cfg), "architecture": "LlavaForConditionalGeneration (random weights, scaled)",
                      "threads": torch.get_num_threads(), "device": "cpu", "batch_size": batch_size, "batch_rows": batch_rows,
                      "cells_per_pair": D * L * C * G, "groups": list(exact.groups)},
            "methods": rows}


def _top_recall(est: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of the k highest cells of `truth` that are among the k highest of `est`."""
    t, e = np.nan_to_num(truth, nan=-np.inf).ravel(), np.nan_to_num(est, nan=-np.inf).ravel()
    return len(set(np.argsort(-t)[:k]) & set(np.argsort(-e)[:k])) / k
