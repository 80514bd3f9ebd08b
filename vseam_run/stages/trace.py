"""The trace stage: clean/edited pairs → causal tracing and logit lens → registry and figures.

The library (`vseam_run.trace`) knows nothing of specs, stores or where pairs come from;
this module turns edit results into `TracePair`s, calls it with the spec's settings, saves
finished layers as checkpoints (so `--resume` skips them) and records the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from vseam_run import dist, report
from vseam_run import trace as tr
from vseam_run.data.base import Question
from vseam_run.errors import VseamError
from vseam_run.ledger import StageCheckpointer
from vseam_run.spec import TraceSpec
from vseam_run.stages.context import StageContext
from vseam_run.vlm import VLM

STAGE = "trace"


class EditLike(Protocol):
    """What the stage needs of one edit (procedural.EditResult has it)."""

    qid: str
    image_path: Path
    original_answer: str
    edited_answer: str


@dataclass(frozen=True)
class EditPair:
    """A kept edit as tracing uses it: the edited image and the two answers (an EditLike)."""

    qid: str
    image_path: Path
    original_answer: str
    edited_answer: str


def pairs_of(edits: Sequence[Any]) -> list[EditPair]:
    """EditPairs from the edit stage's kept records (`edited_image`, `expected_answer`) or from
    procedural edits (`image_path`, `edited_answer`)."""
    return [EditPair(e.qid, Path(getattr(e, "edited_image", None) or e.image_path), e.original_answer,
                     getattr(e, "expected_answer", None) or e.edited_answer) for e in edits]


def pairs_state(pairs: Sequence[EditPair]) -> list[dict[str, str]]:
    """What the run registry keeps of the pairs, so a resumed run traces the same ones."""
    return [{"qid": p.qid, "image_path": str(p.image_path), "original_answer": p.original_answer,
             "edited_answer": p.edited_answer} for p in pairs]


def pairs_from_state(state: list[dict[str, str]]) -> list[EditPair]:
    return [EditPair(d["qid"], Path(d["image_path"]), d["original_answer"], d["edited_answer"]) for d in state]


def procedural_pairs(questions: Sequence[Question], cache_dir: Path) -> list[EditPair]:
    """The toy world's exact edits as pairs (a trace without an edit stage). Rank 0 makes them
    first (they are cached on disk); the other ranks then read them from the cache."""
    from vseam_run.edit.procedural import make_edits

    with dist.main_first():
        return pairs_of(make_edits(questions, cache_dir / "edits", progress=False))


def pairs_from_edits(vlm: VLM, questions: Sequence[Question], edits: Sequence[EditLike]) -> tuple[list[tr.TracePair], list[str]]:
    """TracePairs for edits whose two answers start with different tokens; the qids left out."""
    by_qid = {q.qid: q for q in questions}
    edits = [e for e in edits if e.qid in by_qid]
    clean = vlm.answer_token_ids([e.original_answer for e in edits])
    edited = vlm.answer_token_ids([e.edited_answer for e in edits])
    pairs, skipped = [], []
    for e, c, d in zip(edits, clean, edited):
        if c is None or d is None or c == d:
            skipped.append(e.qid)
            continue
        q = by_qid[e.qid]
        with Image.open(e.image_path) as im:
            edited_image = im.convert("RGB")
        pairs.append(tr.TracePair(e.qid, q.question, q.load_image(), edited_image, e.original_answer, e.edited_answer, c, d))
    return pairs, skipped


def run_trace(ctx: StageContext, settings: TraceSpec, questions: Sequence[Question], edits: Sequence[EditLike], *,
              name: str, batch_size: int, stream: bool = False) -> tr.TraceResult:
    """Trace the pairs, record the result in the registry and draw its figures. Under torchrun the
    tracing and the lens are split by whole batches of pairs (`vseam_run.dist`), the spot check
    runs on rank 0 alone; `stream`: the exact trace holds one batch at a time."""
    vlm = ctx.vlm
    candidates, skipped = pairs_from_edits(vlm, questions, edits)
    if skipped:
        ctx.log(f"  trace: {len(skipped)} pair(s) whose answers share a first token (or have none) left out")
    kw = dict(window=settings.window, margin=settings.margin, directions=settings.directions, components=settings.components)
    t0 = time.perf_counter()
    pairs = tr.select_pairs(vlm, candidates, margin=settings.margin, limit=settings.pairs, batch_size=batch_size,
                            directions=settings.directions)
    if not pairs:
        raise VseamError(
            f"trace: none of {len(candidates)} pair(s) changes the target answer's probability by ≥ trace.margin "
            f"({settings.margin:g}) between clean and edited image",
            hint="lower trace.margin, or check that the model answers the questions (see the edit stage's accuracy)",
        )
    ctx.log(f"  trace ({settings.method}): {len(pairs)} of {len(candidates)} pair(s) pass the margin {settings.margin:g}")
    spot = None
    if settings.method == "exact":
        fp = tr.fingerprint(candidates, model=vlm.entry.content_hash(), dtype=str(vlm.dtype), limit=settings.pairs, **kw)
        result = tr.exact_trace(vlm, pairs, batch_size=batch_size, batch_rows=settings.batch_rows,
                                checkpoint=StageCheckpointer(ctx.store, ctx.run_id, STAGE), key_prefix=f"exact.{fp}",
                                stream=stream, **kw)
        spot = dist.main_decides(lambda: tr.spot_check(vlm, pairs, result, window=settings.window))
    elif settings.method == "attribution":
        result = tr.attribution_trace(vlm, pairs, batch_size=batch_size, **kw)
    else:
        result = tr.reference_trace(vlm, pairs, **kw)
    if settings.lens:
        result.lens = tr.logit_lens(vlm, pairs, batch_size=batch_size)
    result.candidates = len(candidates)
    result.seconds = time.perf_counter() - t0
    _record(ctx, result, spot, len(skipped))
    _figures(ctx, result, name)
    return result


def _record(ctx: StageContext, result: tr.TraceResult, spot: float | None, skipped: int) -> None:
    doc = result.to_json()
    doc["skipped_same_first_token"] = skipped
    ctx.store.put_document(ctx.run_id, "trace", doc)
    metrics: dict[str, float] = {"trace.candidates": result.candidates, "trace.pairs": len(result.qids),
                                 "trace.seconds": result.seconds}
    for i, d in enumerate(result.directions):
        metrics[f"trace.{d}.included"] = int(result.eligible[i].sum())
        metrics[f"trace.{d}.excluded"] = int((~result.eligible[i]).sum())
    if spot is not None:
        metrics["trace.spot_check_max_diff"] = spot
    for p in result.peaks():
        key = f"trace.{p['direction']}.{p['component']}"
        metrics[f"{key}.peak_recovery"] = p["recovery"]
        metrics[f"{key}.peak_layer"] = p["layer"]
        ctx.log(f"  {p['direction']}, {p['component']}: strongest at layer {p['layer']}, {p['group']} "
                f"(recovery {p['recovery']:.2f}, n = {p['n']})")
    ctx.record(metrics)


def _figures(ctx: StageContext, result: tr.TraceResult, name: str) -> None:
    rec, _, n = result.summary()
    for i, d in enumerate(result.directions):
        if not result.eligible[i].any():
            continue
        panels = {c: rec[i, :, j] for j, c in enumerate(result.components)}
        win = f", window {result.window}" if result.window > 1 else ""
        counts = (f"{result.method} patching{win}; n = {int(result.eligible[i].sum())} pairs "
                  f"({int((~result.eligible[i]).sum())} excluded by margin {result.margin:g})")
        path = report.trace_heatmap(panels, result.groups, ctx.art_dir / f"trace_{d}.png",
                                    title=f"causal trace, {d.replace('_', ' ')} — {name}", counts=counts)
        ctx.artifact(f"trace.heatmap.{d}", path)
    if result.lens is not None:
        lens = result.lens
        curves = {}
        for im, iname in enumerate(("clean", "edited")):
            for tok, tname in enumerate(("clean", "edited")):
                curves[f"{iname} image, {tname} answer"] = (lens.prob[im, tok].mean(0), np.median(lens.rank[im, tok], 0))
        path = report.logit_lens_plot(curves, ctx.art_dir / "logit_lens.png",
                                      title=f"logit lens at the last position — {name} (n = {len(result.qids)} pairs)")
        ctx.artifact("trace.logit_lens", path)
