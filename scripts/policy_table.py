"""Every modulation policy on every toy spec, held-out and in-sample, as one markdown table.

    python -m scripts.policy_table [specs/toy_*.yaml ...] [--json out.json]   # from the repo root

Per spec the data, splits, model and head search are made once, exactly as `vseam run` makes
them (same seed, so every policy sees the same search / val / test questions); then the
modulation stage (`vseam_run/stages/modulate.py`) runs once per policy with
`evaluate.protocol: both`. Columns: the parameters chosen on val, the number of heads changed,
held-out (test split) and in-sample (search split) accuracy baseline → modulated with the gain's
paired 95% bootstrap interval and McNemar p, and the random-head control (the policy's own scale
values on random heads: mean ± sd of the gain over the draws). Nothing is recorded in a registry;
`--json` keeps every metric.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vseam_run import registry
from vseam_run.data import load_questions
from vseam_run.data.toyworld import ToyWorldParams
from vseam_run.scoring import Item
from vseam_run.search import SearchItem, search_heads
from vseam_run.spec import Spec, load_spec
from vseam_run.splits import split_by_image
from vseam_run.stages import modulate as stage
from vseam_run.vlm import VLM

POLICIES: dict[str, dict[str, Any]] = {
    "linear": {"policy": "linear", "lam": "auto"},
    "topk": {"policy": "topk"},
    "paper": {"policy": "paper"},
    "learned": {"policy": "learned"},
}


def _log(msg: Any) -> None:
    if isinstance(msg, str) and msg.strip():
        print(msg, file=sys.stderr, flush=True)


def _prepare(spec: Spec, cache: Path) -> tuple[VLM, Any, dict[str, list[Item]]]:
    """Model, head-search result and split items, as the pipeline makes them."""
    d, toy = spec.data, spec.data.toyworld
    params = ToyWorldParams(seed=toy.seed if toy.seed is not None else spec.seed, images=toy.images, image_size=toy.image_size)
    loaded = load_questions(d.source, d.path, d.images, level=d.level, categories=d.categories, limit=d.limit,
                            on_missing_image=d.on_missing_image, toyworld=params, cache_dir=cache)
    splits = split_by_image(loaded.questions, d.split.model_dump(), spec.seed)
    vlm = VLM.load(registry.get_entry(spec.model), torch.device("cpu"), torch.float32)
    by_split: dict[str, list[Item]] = {}
    for name, qs in splits.items():
        gold = vlm.answer_token_ids([q.answer for q in qs])
        by_split[name] = [Item(q.qid, q.load_image(), q.question, q.answer, g, q.category, name) for q, g in zip(qs, gold) if g is not None]
    s = spec.search
    result = search_heads(vlm, [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in by_split["search"]],
                          strategy=s.strategy, scoring=s.scoring, ablation=s.ablation, top_k=s.top_k, verify_k=s.verify_k,
                          batch_size=spec.batch_size, batch_rows=s.batch_rows)
    return vlm, result, by_split


def _one_policy(spec: Spec, name: str, vlm: VLM, result: Any, by_split: dict[str, list[Item]], art: Path) -> dict[str, Any]:
    pol = Spec.model_validate({**spec.model_dump(mode="json"), "modulation": POLICIES[name]}).modulation
    ev = spec.evaluate
    metrics: dict[str, float] = {}
    docs: dict[str, Any] = {}
    sink = stage.Sink(metrics.update, docs.__setitem__, lambda *_: None, lambda *_: None, _log, art)
    settings = stage.Settings(pol, "both", ev.answer_match if ev else "first_token", ev.control_draws if ev else 5,
                              ev.bootstrap if ev else 2000, spec.batch_size, spec.seed, spec.name)
    t0 = time.perf_counter()
    stage.run(vlm, result, by_split, settings, sink)
    return {"metrics": metrics, "modulation": {k: v for k, v in docs["modulation"].items() if k != "scales"},
            "seconds": time.perf_counter() - t0}


def _gain(m: dict, prefix: str) -> str:
    b, a = m[f"{prefix}.accuracy.baseline"], m[f"{prefix}.accuracy.modulated"]
    return (f"{b:.3f} → {a:.3f} ({a - b:+.3f}; [{m[f'{prefix}.accuracy.diff_ci_low']:+.3f}, "
            f"{m[f'{prefix}.accuracy.diff_ci_high']:+.3f}], p {m[f'{prefix}.mcnemar_p']:.2f})")


def _control(m: dict, prefix: str) -> str:
    if f"{prefix}.control.gain_mean" not in m:
        return "– (no head changed)"
    return f"{m[f'{prefix}.control.gain_mean']:+.3f} ± {m[f'{prefix}.control.gain_sd']:.3f}"


def _chosen(doc: dict) -> str:
    p = doc["policy"]
    return {"linear": lambda: f"λ = {doc['lambda']:g}", "paper": lambda: f"K = {doc['k']}, λ = {doc['lambda']:g}",
            "topk": lambda: f"k = {doc['k']}, α = {doc['alpha']:g}, β = {doc['beta']:g}",
            "learned": lambda: f"epoch {doc['best_epoch']}"}.get(p, lambda: "–")()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="*", default=sorted(glob.glob("specs/toy_*.yaml")))
    ap.add_argument("--policies", nargs="*", default=list(POLICIES))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out: dict[str, dict[str, Any]] = {}
    print("| spec | policy | chosen on val | heads changed | held-out test: baseline → modulated (gain; 95% CI, McNemar p) "
          "| control | in-sample (search split): baseline → modulated (gain; 95% CI, p) | control |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.specs:
            spec = load_spec(Path(path))
            vlm, result, by_split = _prepare(spec, Path(tmp) / "cache")
            for name in args.policies:
                r = _one_policy(spec, name, vlm, result, by_split, Path(tmp))
                out.setdefault(spec.name, {})[name] = r
                m = r["metrics"]
                print(f"| {spec.name} | {name} | {_chosen(r['modulation'])} | {int(m['modulation.heads_changed'])} | "
                      f"{_gain(m, 'eval.test')} | {_control(m, 'eval.test')} | {_gain(m, 'eval.in_sample')} | "
                      f"{_control(m, 'eval.in_sample')} |", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
