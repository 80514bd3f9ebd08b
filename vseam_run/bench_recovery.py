"""Recovery benchmark: does the method find heads that are known to be there?

A suite of planted variants of one toy model (`zoo/plant.py`) — harmful heads in layer 0 and in
a later layer, two harmful heads at once, a removed head, a weakened (helpful-to-enhance) head,
and the unplanted model as the null — each searched and modulated at every level exactly as a
run would (the same search strategies, the same modulation stage with its held-out and
in-sample evaluation, intervals, McNemar and random-head control). The planted heads are chosen
from the source model's own ablation (`measure_use`, on toy-world questions seeded apart from
the bench's splits), never by hand.

Per variant and level:

* per strategy: the rank of every planted head in the list where it should be (negative for
  harmful heads, positive for weakened ones; both for removed ones, which should be nowhere),
  recall@k of the planted heads, and each strategy's score of the planted head over exact's.
  `reference` runs on a small case (the first few search questions) beside exact on the same
  case: the same numbers are expected (max |diff| is reported);
* per policy: the held-out gain with its 95% interval, McNemar p and the random-head control,
  in-sample beside it, and the scale the policy gave the planted heads against the scale that
  would undo them;
* the harm (the source model's test accuracy minus the planted model's, on the same questions)
  and the best repair inside the clip range (the planted heads alone scaled by the clipped undo
  scale).

On the null model the same policy numbers say how often a policy "gains" where nothing was planted.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vseam_run.search import STRATEGIES, SearchItem, SearchResult, search_heads
from vseam_run.zoo.plant import USE_THRESHOLD, HeadUse, PlantedHead

#: The policies the bench runs, by name → the spec's `modulation:` mapping. New policies are added here.
POLICY_SPECS: dict[str, dict[str, Any]] = {
    "paper": {"policy": "paper"},
    "linear": {"policy": "linear", "lam": "auto"},
    "topk": {"policy": "topk"},
    "learned": {"policy": "learned"},
    # The field's rivals (issue 22), at their defaults: hyperparameters chosen on val.
    "ablate": {"policy": "ablate"},
    "steer": {"policy": "steer"},
    "image_attention": {"policy": "image_attention"},
}
#: The default set (the rivals cost as much again: ask for them with --policies).
POLICIES: tuple[str, ...] = ("paper", "linear", "topk", "learned")
LEVELS: tuple[str, ...] = ("object", "attribute", "relation")
#: The planted factors, fixed before any result was seen: flipped (−1, undo −1: outside [0, 2]),
#: amplified (×3, undo 1/3: inside), removed (0: no undo), weakened (×0.5, undo ×2: the clip's edge).
FLIP, AMPLIFY, REMOVE, WEAKEN = -1.0, 3.0, 0.0, 0.5
RECALL_K = (1, 5, 10)
CLIP = (0.0, 2.0)


@dataclass
class RecoveryConfig:
    model: str = "toy-llava"
    levels: tuple[str, ...] = LEVELS
    images: int = 200  # toy-world scenes per level (split 0.6 / 0.2 / 0.2 by image)
    use_images: int = 60  # scenes (all levels, ~2.4 questions each) for choosing the planted heads
    threshold: float = USE_THRESHOLD
    strategies: tuple[str, ...] = STRATEGIES
    policies: tuple[str, ...] = POLICIES
    reference_questions: int = 4
    variants: tuple[str, ...] | None = None  # None: the whole suite
    control_draws: int = 5
    bootstrap: int = 1000
    batch_size: int = 16
    batch_rows: int = 8
    top_k: int = 10
    seed: int = 0


def small_config(model: str = "toy-llava") -> RecoveryConfig:
    """The quick mode (tests, a first look): one level, fewer questions, the null and two plants."""
    return RecoveryConfig(model=model, levels=("object",), images=80, use_images=40, policies=("paper", "topk"),
                          variants=("null", "harmful-L0", "removed"), control_draws=2, bootstrap=300, reference_questions=2)


@dataclass
class Variant:
    name: str
    heads: list[PlantedHead]
    why: str


def suite(use: HeadUse, threshold: float) -> tuple[list[Variant], list[str]]:
    """The planted variants, each head the most-used one of its layer group (ablation drop ≥
    threshold); a variant whose heads do not exist in this model is left out, with a note."""
    notes: list[str] = []
    out = [Variant("null", [], "the unplanted model")]
    l0 = use.used(threshold, layers=[0])
    later = use.used(threshold, layers=range(1, use.drops.shape[0]))
    if l0:
        l, h, d = l0[0]
        out.append(Variant("harmful-L0", [PlantedHead(l, h, AMPLIFY)], f"most-used layer-0 head (drop {d:.3f}), amplified"))
    else:
        notes.append(f"harmful-L0 left out: no layer-0 head costs ≥ {threshold:g} accuracy when ablated")
    if later:
        l, h, d = later[0]
        out.append(Variant("harmful-later", [PlantedHead(l, h, FLIP)], f"most-used head of layers ≥ 1 (drop {d:.3f}), flipped"))
        # Two at once: the most-used heads of the two layers (≥ 1) whose best heads cost most.
        best_by_layer: dict[int, tuple[int, int, float]] = {}
        for l2, h2, d2 in later:
            best_by_layer.setdefault(l2, (l2, h2, d2))
        two = sorted(best_by_layer.values(), key=lambda t: -t[2])[:2]
        if len(two) == 2:
            out.append(Variant("harmful-two", [PlantedHead(l2, h2, AMPLIFY) for l2, h2, _ in two],
                               "most-used heads of the two layers ≥ 1 that matter most, both amplified"))
        else:
            notes.append(f"harmful-two left out: only one layer ≥ 1 has a head costing ≥ {threshold:g}")
        out.append(Variant("removed", [PlantedHead(l, h, REMOVE)], f"most-used head of layers ≥ 1 (drop {d:.3f}), zeroed"))
        out.append(Variant("weakened", [PlantedHead(l, h, WEAKEN)],
                           f"most-used head of layers ≥ 1 (drop {d:.3f}), halved: enhancing it ×2 is the exact repair"))
    else:
        notes.append(f"later-layer variants left out: no head in layers ≥ 1 costs ≥ {threshold:g} accuracy when ablated")
    return out, notes


# ---- data ---------------------------------------------------------------------------------------


def level_splits(vlm, level: str, images: int, seed: int, cache: Path) -> dict[str, list]:
    """Toy-world questions of one level split by image as a run splits them (0.6 / 0.2 / 0.2)."""
    from vseam_run.data import load_questions
    from vseam_run.data.toyworld import ToyWorldParams
    from vseam_run.scoring import Item
    from vseam_run.splits import split_by_image

    loaded = load_questions("toyworld", None, None, level=level, toyworld=ToyWorldParams(seed=seed, images=images), cache_dir=cache)
    splits = split_by_image(loaded.questions, {"search": 0.6, "val": 0.2, "test": 0.2}, seed)
    out: dict[str, list] = {}
    for name, qs in splits.items():
        gold = vlm.answer_token_ids([q.answer for q in qs])
        out[name] = [Item(q.qid, q.load_image(), q.question, q.answer, g, q.category, name) for q, g in zip(qs, gold) if g is not None]
    return out


# ---- what a search says about the planted heads -------------------------------------------------------


def rank_of(matrix: np.ndarray, layer: int, head: int, allowed: np.ndarray | None = None) -> int | None:
    """1-based rank of (layer, head) in a list ordered as the search's top lists are (score
    descending, ties by position), counting only heads with score > 0 (and allowed); None when
    the head is not listed at all (score ≤ 0, or not re-scored by attribution+verify)."""
    m = np.asarray(matrix, dtype=np.float64)
    if allowed is not None:
        m = np.where(allowed, m, 0.0)
    s = m[layer, head]
    if not s > 0:
        return None
    flat = m.reshape(-1)
    idx = layer * m.shape[1] + head
    return int(((flat > s) | ((flat == s) & (np.arange(flat.size) < idx))).sum()) + 1


def _lists(result: SearchResult) -> dict[str, np.ndarray]:
    from vseam_run.search.scoring import ranking_matrices

    pos, neg = ranking_matrices(result.effects, result.correct, result.scoring)
    return {"positive": pos, "negative": neg}


def planted_report(result: SearchResult, heads: Sequence[PlantedHead], exact: SearchResult | None) -> dict[str, Any]:
    """Ranks, recall@k and score ratios to exact of the planted heads in one search."""
    lists = _lists(result)
    ex_lists = _lists(exact) if exact is not None else None
    rows = []
    for h in heads:
        row: dict[str, Any] = {"head": [h.layer, h.head], "label": h.label, "kind": h.kind, "expected_list": h.expected_list}
        for name, m in lists.items():
            row[f"rank_{name}"] = rank_of(m, h.layer, h.head, result.verified)
            row[f"score_{name}"] = float(m[h.layer, h.head])
        if h.expected_list and ex_lists is not None:
            ex = float(ex_lists[h.expected_list][h.layer, h.head])
            row["exact_score"] = ex
            mine = float(lists[h.expected_list][h.layer, h.head])
            row["ratio_to_exact"] = mine / ex if ex > 0 else None
        rows.append(row)
    expected = [r for r in rows if r["expected_list"]]
    recall = {}
    for k in RECALL_K:
        hits = [r[f"rank_{r['expected_list']}"] is not None and r[f"rank_{r['expected_list']}"] <= k for r in expected]
        recall[str(k)] = float(np.mean(hits)) if hits else None
    return {"heads": rows, "recall": recall}


# ---- the bench ----------------------------------------------------------------------------------------


def verified_from(att: SearchResult, exact: SearchResult, verify_k: int) -> SearchResult:
    """attribution+verify from the attribution and exact searches on the same questions: the
    verify_k heads attribution picks (`verify_candidates`, as search_heads picks them) carry
    exact's numbers. search_heads would re-score those heads exactly — the same numbers (a test
    checks this against search_heads) — so the bench does not pay for that search twice."""
    from vseam_run.search import verify_candidates
    from vseam_run.search.scoring import score

    verified = verify_candidates(att.effects, att.correct, att.scoring, verify_k)
    merged = att.effects.copy()
    merged[:, verified] = exact.effects[:, verified]
    matrices = score(merged, exact.correct, att.scoring, att.top_k, allowed=verified)
    return SearchResult("attribution+verify", att.scoring, list(att.qids), merged, exact.base_prob, exact.correct, matrices,
                        att.seconds, verified, att.top_k)


def _policy(name: str):
    from vseam_run.spec import Spec

    return Spec.model_validate({"name": "recovery", "model": "toy-llava", "data": {"source": "toyworld"}, "search": {},
                                "modulation": POLICY_SPECS[name]}).modulation


def _run_policy(vlm, result: SearchResult, by_split: dict, name: str, cfg: RecoveryConfig, heads: Sequence[PlantedHead],
                art: Path) -> dict[str, Any]:
    from vseam_run.stages import modulate as stage

    metrics: dict[str, float] = {}
    docs: dict[str, Any] = {}
    sink = stage.Sink(metrics.update, docs.__setitem__, lambda *_: None, lambda *_: None, lambda *_: None, art)
    settings = stage.Settings(_policy(name), "both", "first_token", cfg.control_draws, cfg.bootstrap, cfg.batch_size, cfg.seed,
                              f"recovery-{name}")
    t0 = time.perf_counter()
    stage.run(vlm, result, by_split, settings, sink)
    doc = docs["modulation"]
    scales = np.asarray(doc["scales"], dtype=np.float64) if "scales" in doc else None
    if scales is None:  # a rival policy (no scale matrix): whether it changed each planted head
        changed = {tuple(x) for x in doc.get("heads", [])}
        planted_scales = {h.label: "changed" if (h.layer, h.head) in changed else "unchanged" for h in heads}
    elif scales.ndim == 3:  # per position group: report the last group (the answer position) too
        planted_scales = {h.label: [float(v) for v in scales[h.layer, :, h.head]] for h in heads}
    else:
        planted_scales = {h.label: float(scales[h.layer, h.head]) for h in heads}

    def side(prefix: str) -> dict[str, Any]:
        b, a = metrics[f"{prefix}.accuracy.baseline"], metrics[f"{prefix}.accuracy.modulated"]
        return {"n": int(metrics[f"{prefix}.n"]), "baseline": b, "modulated": a, "gain": a - b,
                "ci": [metrics[f"{prefix}.accuracy.diff_ci_low"], metrics[f"{prefix}.accuracy.diff_ci_high"]],
                "mcnemar_p": metrics[f"{prefix}.mcnemar_p"],
                "control_gain_mean": metrics.get(f"{prefix}.control.gain_mean"),
                "control_gain_sd": metrics.get(f"{prefix}.control.gain_sd"),
                "control_frac_at_least": metrics.get(f"{prefix}.control.frac_at_least_policy")}

    params = {k: v for k, v in doc.items() if k not in ("scales", "answer_match", "protocol")}
    return {"params": params, "heads_changed": int(metrics["modulation.heads_changed"]), "held_out": side("eval.test"),
            "in_sample": side("eval.in_sample"), "planted_scales": planted_scales, "seconds": time.perf_counter() - t0}


def _test_accuracy(vlm, items: list, edits=None, batch_size: int = 16) -> float:
    from vseam_run.scoring import ScoredSet, accuracy

    return accuracy(ScoredSet(vlm, items, batch_size, "test").run(edits or {}))


def _in_clip_repair(vlm, test: list, heads: Sequence[PlantedHead], batch_size: int) -> float | None:
    """Test accuracy with only the planted heads rescaled by their undo scale clipped to CLIP."""
    from vseam_run.heads import HeadEdit

    undo = [h for h in heads if h.undo_scale is not None]
    if not undo:
        return None
    edits: dict[int, HeadEdit] = {}
    for h in undo:
        e = edits.setdefault(h.layer, HeadEdit(factors=torch.ones(vlm.num_heads)))
        e.factors[h.head] = min(max(h.undo_scale, CLIP[0]), CLIP[1])
    return _test_accuracy(vlm, test, edits, batch_size)


def run_level(vlm, variant: Variant, level: str, cfg: RecoveryConfig, cache: Path, art: Path,
              log: Callable[[str], None]) -> dict[str, Any]:
    by_split = level_splits(vlm, level, cfg.images, cfg.seed, cache)
    items = [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in by_split["search"]]
    kw = dict(scoring="subset", ablation="mean", top_k=cfg.top_k, batch_size=cfg.batch_size, batch_rows=cfg.batch_rows)
    results: dict[str, SearchResult] = {}
    strategies: dict[str, Any] = {}
    order = ["exact"] + [s for s in ("attribution", "attribution+verify") if s in cfg.strategies or
                         (s == "attribution" and "attribution+verify" in cfg.strategies)]
    for s in order:
        t0 = time.perf_counter()
        if s == "attribution+verify":
            results[s] = verified_from(results["attribution"], results["exact"], 3 * cfg.top_k)
        else:
            results[s] = search_heads(vlm, items, strategy=s, **kw)
        strategies[s] = {"questions": len(items), "seconds": time.perf_counter() - t0,
                         **planted_report(results[s], variant.heads, results["exact"])}
        log(f"    {s}: {strategies[s]['seconds']:.1f}s, recall@1/5/10 {strategies[s]['recall']}")
    if "attribution" not in cfg.strategies:
        strategies.pop("attribution", None)
    if "reference" in cfg.strategies:
        sub = items[: cfg.reference_questions]
        t0 = time.perf_counter()
        ref = search_heads(vlm, sub, strategy="reference", **kw)
        ref_s = time.perf_counter() - t0
        ex_sub = search_heads(vlm, sub, strategy="exact", **kw)
        strategies["reference"] = {"questions": len(sub), "seconds": ref_s, "small_case": True,
                                   "max_abs_diff_vs_exact_same_case": float(np.abs(ref.effects - ex_sub.effects).max()),
                                   **planted_report(ref, variant.heads, ex_sub)}
        log(f"    reference on {len(sub)} questions: max |diff| vs exact {strategies['reference']['max_abs_diff_vs_exact_same_case']:.1e}")
    policies: dict[str, Any] = {}
    for p in cfg.policies:
        policies[p] = _run_policy(vlm, results["exact"], by_split, p, cfg, variant.heads, art)
        h = policies[p]["held_out"]
        log(f"    {p}: held-out {h['baseline']:.3f} → {h['modulated']:.3f} (p {h['mcnemar_p']:.2g}), "
            f"planted scales {policies[p]['planted_scales']}")
    ex = results["exact"].matrices
    return {
        "level": level, "split_sizes": {k: len(v) for k, v in by_split.items()},
        "test_accuracy": _test_accuracy(vlm, by_split["test"], batch_size=cfg.batch_size),
        "in_clip_repair_test_accuracy": _in_clip_repair(vlm, by_split["test"], variant.heads, cfg.batch_size),
        "exact_top_negative": [[l, h, s] for l, h, s in ex.top_negative[:5]],
        "exact_top_positive": [[l, h, s] for l, h, s in ex.top_positive[:5]],
        "counts": {"correct": ex.n_correct, "wrong": ex.n_wrong},
        "strategies": strategies, "policies": policies,
    }


def run_recovery(cfg: RecoveryConfig, log: Callable[[str], None] | None = None, work: Path | None = None,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The whole benchmark on one model; returns one JSON-able dict (see the module doc).
    `on_update` gets the result so far after every finished level (nothing computed is lost
    when a long bench is stopped)."""
    from vseam_run.registry import get_entry, load_entry_file
    from vseam_run.vlm import VLM
    from vseam_run.zoo import plant as pl

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t_all = time.perf_counter()
    entry = get_entry(cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work or tmp)
        cache = root / "cache"
        src = VLM.load(entry, torch.device("cpu"), torch.float32)
        log(f"{entry.name}: measuring head use (zero-ablation of each head, {cfg.use_images} scenes, all levels)")
        t0 = time.perf_counter()
        use = pl.measure_use(src, pl.use_questions(src, cfg.use_images, cache_dir=cache), batch_size=cfg.batch_size * 2, log=log)
        use_s = time.perf_counter() - t0
        variants, notes = suite(use, cfg.threshold)
        if cfg.variants is not None:
            variants = [v for v in variants if v.name in cfg.variants]
        del src
        out_variants: list[dict[str, Any]] = []

        def result(done: bool, vs: list[dict[str, Any]]) -> dict[str, Any]:
            _add_harm(vs)
            return {
                "model": entry.name, "complete": done, "config": asdict(cfg), "threshold": cfg.threshold, "clip": list(CLIP),
                "factors": {"flipped": FLIP, "amplified": AMPLIFY, "removed": REMOVE, "weakened": WEAKEN},
                "use": {**use.to_json(), "seconds": use_s, "used": [[l, h, d] for l, h, d in use.used(cfg.threshold)]},
                "notes": notes, "variants": vs, "null_false_gains": null_false_gains(vs),
                "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t_all,
            }

        for v in variants:
            log(f"{v.name}: {', '.join(h.label for h in v.heads) or 'nothing planted'} — {v.why}")
            if v.heads:
                vlm0 = VLM.load(entry, torch.device("cpu"), torch.float32)
                done = pl.plant(entry, vlm0, v.heads, root / v.name, use=use, threshold=cfg.threshold, name=f"{entry.name}-{v.name}")
                del vlm0
                vlm = VLM.load(load_entry_file(done.entry), torch.device("cpu"), torch.float32)  # the checkpoint as written
            else:
                vlm = VLM.load(entry, torch.device("cpu"), torch.float32)
            levels, skipped = [], []
            for level in cfg.levels:
                if v.heads and not use.applies(v.heads, level, cfg.threshold):
                    skipped.append(level)  # no planted head costs ≥ threshold at this level
                    log(f"  level {level}: skipped (no planted head costs ≥ {cfg.threshold:g} there when ablated)")
                    continue
                log(f"  level {level}")
                levels.append(run_level(vlm, v, level, cfg, cache, root / "art", log))
                if on_update:
                    on_update(result(False, out_variants + [_variant_doc(v, use, skipped, levels)]))
            out_variants.append(_variant_doc(v, use, skipped, levels))
        return result(True, out_variants)


def _variant_doc(v: Variant, use: HeadUse, skipped: list[str], levels: list[dict]) -> dict[str, Any]:
    return {"name": v.name, "why": v.why, "heads": [h.to_json() for h in v.heads],
            "use_drops": {h.label: float(use.drops[h.layer, h.head]) for h in v.heads},
            "use_drops_by_level": {lv: {h.label: float(m[h.layer, h.head]) for h in v.heads} for lv, m in use.by_level.items()},
            "levels_skipped": skipped, "levels": levels}


SUITE_ORDER = ("null", "harmful-L0", "harmful-later", "harmful-two", "removed", "weakened")


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same model and head use with different variants (run side
    by side); the harm and the null's false gains are recomputed over the merged variants."""
    from vseam_run.errors import VseamError

    first = parts[0]
    for p in parts[1:]:
        if p["model"] != first["model"] or p["use"]["drops"] != first["use"]["drops"]:
            raise VseamError("--from-json: the files are from different models or head-use measurements", hint="merge runs of one model")
    variants = {v["name"]: v for p in parts for v in p["variants"]}
    ordered = [variants[n] for n in SUITE_ORDER if n in variants] + [v for n, v in variants.items() if n not in SUITE_ORDER]
    _add_harm(ordered)
    return {**first, "complete": all(p.get("complete", True) for p in parts), "variants": ordered,
            "null_false_gains": null_false_gains(ordered), "seconds": sum(p["seconds"] for p in parts),
            "merged_from": len(parts), "config": {**first["config"], "variants": [v["name"] for v in ordered]}}


def _add_harm(variants: list[dict]) -> None:
    """Harm of each plant: the null model's test accuracy minus the planted one's, same questions."""
    null = next((v for v in variants if v["name"] == "null"), None)
    if null is None:
        return
    base = {lv["level"]: lv["test_accuracy"] for lv in null["levels"]}
    for v in variants:
        for lv in v["levels"]:
            lv["source_test_accuracy"] = base.get(lv["level"])
            lv["harm"] = None if lv["level"] not in base else base[lv["level"]] - lv["test_accuracy"]


def null_false_gains(variants: list[dict]) -> dict[str, Any] | None:
    """On the unplanted model: how many (policy, level) cells gain held-out accuracy, and how many
    are 'significant' (McNemar p < 0.05 with a positive gain), held-out and in-sample."""
    null = next((v for v in variants if v["name"] == "null"), None)
    if null is None:
        return None
    cells = [(lv["level"], p, r) for lv in null["levels"] for p, r in lv["policies"].items()]
    out: dict[str, Any] = {"cells": len(cells)}
    for side in ("held_out", "in_sample"):
        out[side] = {"gain_gt_0": sum(r[side]["gain"] > 1e-12 for _, _, r in cells),
                     "significant_gain": sum(r[side]["gain"] > 1e-12 and r[side]["mcnemar_p"] < 0.05 for _, _, r in cells),
                     "loss_lt_0": sum(r[side]["gain"] < -1e-12 for _, _, r in cells)}
    return out


# ---- table and figure ---------------------------------------------------------------------------------


def _fmt_rank(r: int | None) -> str:
    return "–" if r is None else str(r)


def table_rows(res: dict) -> list[dict[str, str]]:
    """One row per (variant, level): harm, ranks per strategy, ratio, and held-out gains per policy."""
    rows = []
    for v in res["variants"]:
        for lv in v["levels"]:
            row = {"variant": v["name"], "planted": ", ".join(h["label"] for h in v["heads"]) or "–", "level": lv["level"]}
            row["acc (source → planted)"] = (f"{lv['source_test_accuracy']:.3f} → {lv['test_accuracy']:.3f}"
                                             if lv.get("source_test_accuracy") is not None else f"{lv['test_accuracy']:.3f}")
            rep = lv["in_clip_repair_test_accuracy"]
            row["in-clip repair"] = "–" if rep is None else f"{rep:.3f}"
            for s, sr in lv["strategies"].items():
                ranks = []
                for h in sr["heads"]:
                    lst = h["expected_list"]
                    ranks.append(f"{_fmt_rank(h['rank_' + lst])}{lst[0]}" if lst else
                                 f"{_fmt_rank(h['rank_positive'])}p/{_fmt_rank(h['rank_negative'])}n")
                ratio = [h.get("ratio_to_exact") for h in sr["heads"] if h.get("ratio_to_exact") is not None]
                row[f"rank {s}"] = ", ".join(ranks) or "–"
                if s in ("attribution", "attribution+verify") and ratio:
                    row[f"ratio {s}"] = ", ".join(f"{x:.2f}" for x in ratio)
            for p, pr in lv["policies"].items():
                h = pr["held_out"]
                ctl = "" if h["control_gain_mean"] is None else f", ctl {h['control_gain_mean']:+.3f}"
                row[f"{p} held-out"] = f"{h['gain']:+.3f} [{h['ci'][0]:+.3f}, {h['ci'][1]:+.3f}] p {h['mcnemar_p']:.2g}{ctl}"
                row[f"{p} in-sample"] = f"{pr['in_sample']['gain']:+.3f} p {pr['in_sample']['mcnemar_p']:.2g}"
            rows.append(row)
    return rows


def markdown(res: dict) -> str:
    rows = table_rows(res)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(r.get(c, "") for c in cols) + " |")
    return "\n".join(lines)


def figure(res: dict, path: Path) -> Path:
    """Left: rank of each planted head (in its expected list) per strategy; right: held-out gain
    with its 95% interval per policy, planted variants and the null, every level."""
    from vseam_run.report import _new_figure, _save

    labels, ranks, gains = [], [], []
    for v in res["variants"]:
        for lv in v["levels"]:
            labels.append(f"{v['name']}\n{lv['level']}")
            ranks.append({s: [h.get("rank_" + (h["expected_list"] or "negative")) for h in sr["heads"]]
                          for s, sr in lv["strategies"].items()})
            gains.append({p: pr["held_out"] for p, pr in lv["policies"].items()})
    n = len(labels)
    fig = _new_figure(max(8.0, 0.9 * n + 4), 4.6)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    strategies = list(dict.fromkeys(s for r in ranks for s in r))
    total = res["use"]["drops"] and len(res["use"]["drops"]) * len(res["use"]["drops"][0])
    for j, s in enumerate(strategies):
        xs, ys, miss = [], [], []
        for i, r in enumerate(ranks):
            for rk in r.get(s, []):
                (xs if rk is not None else miss).append(i + (j - len(strategies) / 2) * 0.12)
                if rk is not None:
                    ys.append(rk)
        dots = ax1.scatter(xs, ys, s=22, label=s)
        if miss:
            ax1.scatter(miss, [total] * len(miss), marker="x", s=28, color=dots.get_facecolor()[0])
    ax1.set_yscale("log")
    ax1.set_ylim(total * 1.3, 0.8)
    ax1.set_ylabel(f"rank of planted head in its list (1 = top; × = not listed, shown at {total})")
    ax1.set_xticks(range(n), labels, fontsize=7, rotation=90)
    ax1.legend(fontsize=7)
    ax1.set_title("search: where the planted heads rank", fontsize=9)
    policies = list(dict.fromkeys(p for g in gains for p in g))
    for j, p in enumerate(policies):
        xs = [i + (j - len(policies) / 2) * 0.15 for i, g in enumerate(gains) if p in g]
        hs = [g[p] for g in gains if p in g]
        ys = [h["gain"] for h in hs]
        err = [[h["gain"] - h["ci"][0] for h in hs], [h["ci"][1] - h["gain"] for h in hs]]
        ax2.errorbar(xs, ys, yerr=err, fmt="o", ms=4, capsize=2, label=p)
    harm = [lv.get("harm") for v in res["variants"] for lv in v["levels"]]
    ax2.scatter([i for i, h in enumerate(harm) if h is not None], [h for h in harm if h is not None], marker="_", s=200,
                color="black", label="harm (source − planted)")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks(range(n), labels, fontsize=7, rotation=90)
    ax2.set_ylabel("held-out accuracy gain (95% CI)")
    ax2.legend(fontsize=7)
    ax2.set_title("modulation: held-out gain per policy", fontsize=9)
    fig.suptitle(f"recovery of planted heads — {res['model']}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def clean(res: dict) -> dict:
    """JSON-safe: NaN / inf as null."""
    return _nan_to_none(res)
