"""The edit stage: counterfactual images for the run's questions, recorded and checked.

recipe procedural (toy world): exact scene-graph edits. recipe inpaint (real photos): edit text
from each question, box or SAM mask, diffusion inpainting pasted back, pixel and CLIP checks;
edits failing a check are dropped from later stages and counted. Either way the stage stores
every edit's text, mask, seed, pipeline, content hash and files in the run registry (document
`edits`, artifacts `edit.*`), writes the contact sheet, scores the model on the kept edited
images (stage `edited`), and returns an `EditBatch` whose `kept` edits are the clean/edited
pairs later stages (tracing, head search on pairs) use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from vseam_run import dist
from vseam_run.data.base import Question
from vseam_run.edit.checks import pixel_check
from vseam_run.edit.engine import EditBatch, EditRecord, InpaintEditor, judge
from vseam_run.edit.sheet import SheetRow, edit_sheet, sample_across
from vseam_run.edit.text import EditSkip, load_scene_graphs, plan_edits
from vseam_run.errors import VseamError
from vseam_run.progress import progress
from vseam_run.scoring import Item, ScoredSet, accuracy
from vseam_run.spec import EditSpec, Spec
from vseam_run.store import RunStore

Log = Callable[[Any], None]


@dataclass
class EditContext:
    """What the stage needs from the run."""

    spec: Spec
    store: RunStore
    run_id: str
    device: torch.device
    cache_dir: Path
    art_dir: Path
    log: Log
    record: Callable[[dict[str, float]], None]
    vlm: Any = None  # the loaded VLM; None skips scoring the edited images


def run_edit_stage(ctx: EditContext, questions: list[Question], base_rows: dict[str, dict]) -> EditBatch:
    """Make (or reuse) the edits, record them, score the model on the kept ones; see the module doc."""
    spec = ctx.spec.edit
    assert spec is not None
    batch = _procedural(questions, ctx) if spec.recipe == "procedural" else _inpaint(questions, spec, ctx)
    _store(ctx, batch)
    edited_rows = _score_edited(ctx, batch, {q.qid: q for q in questions}, base_rows)
    if spec.contact_sheet:
        _sheet(ctx, batch, base_rows, {r["qid"]: r for r in edited_rows}, spec.contact_sheet)
    return batch


# --- making the edits -------------------------------------------------------------------------


def _fill_sharded(n: int, batch_size: int, make: Callable[[slice], int]) -> int:
    """Under torchrun, each rank makes its whole batches of the `n` edits first (`make(span)`
    writes them to the content-keyed cache and says how many it had to compute); summed over
    the ranks. Afterwards every rank reads all edits, in order, from the cache: the same records
    as a one-process run (a rank that does not share the cache folder — another node without a
    shared file system — computes the ones it misses itself)."""
    spans = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return sum(dist.map_units(spans, make))


def _procedural(questions: list[Question], ctx: EditContext) -> EditBatch:
    from vseam_run.edit.procedural import make_edits

    if dist.current().active:
        _fill_sharded(len(questions), ctx.spec.batch_size,
                      lambda span: len(make_edits(questions[span], ctx.cache_dir / "edits", progress=False)))
    out = EditBatch(computed=None, reused=None)  # procedural edits keep their own cache; not counted
    for e, q in zip(make_edits(questions, ctx.cache_dir / "edits", progress=True), questions):
        with Image.open(q.image_path) as o, Image.open(e.image_path) as ed, Image.open(e.mask_path) as m:
            px = pixel_check(o, ed, np.asarray(m) > 127)
        src, _, tgt = e.edit_text.partition(" → ")
        meta = e.image_path.with_suffix(".json")
        rec = EditRecord(
            qid=q.qid, level=q.level, category=q.category, question=q.question, original_image=q.image_path,
            edited_image=e.image_path, mask_path=e.mask_path, original_answer=e.original_answer,
            expected_answer=e.edited_answer, plan={"text": e.edit_text, "source": src, "target": tgt},
            prompt="", seed=0, pipeline="procedural (toy-world scene graph, re-rendered)",
            key=json.loads(meta.read_text()).get("fingerprint", "") if meta.is_file() else "", mask_source="exact change",
            pixels=px,
        )  # fmt: skip
        judge(rec, ctx.spec.edit)  # type: ignore[arg-type]
        (out.kept if rec.passed else out.dropped).append(rec)
    return out


def _inpaint(questions: list[Question], spec: EditSpec, ctx: EditContext) -> EditBatch:
    rewrite = _rewriter(spec, questions, ctx) if spec.text.rewriter is not None else None
    planned = plan_edits(questions, vocabularies=spec.text.vocabularies, scene_graphs=load_scene_graphs(spec.text.scene_graphs),
                         seed=ctx.spec.seed, rewrite=rewrite)  # fmt: skip
    plans = planned.plans[: spec.limit] if spec.limit else planned.plans
    ctx.log(f"  {len(plans)} edit(s) planned, {len(planned.skipped)} question(s) without a sensible edit")
    if not plans:
        first = f" (first: {planned.skipped[0].qid}: {planned.skipped[0].reason})" if planned.skipped else ""
        raise VseamError(f"edit: no question has a sensible edit{first}", hint="see the reasons in the run's 'edit.skipped' document")
    by_qid = {q.qid: q for q in questions}
    editor = InpaintEditor(spec, ctx.device, ctx.cache_dir / "edits", ctx.log)
    computed = None
    if dist.current().active:  # ranks first make their shares; every edit then comes from the cache
        computed = _fill_sharded(len(plans), ctx.spec.batch_size,
                                 lambda span: editor.run((by_qid[p.qid], p) for p in plans[span]).computed or 0)
    with progress("inpaint edits", len(plans)) as advance:
        batch = editor.run(((by_qid[p.qid], p) for p in plans), advance)
    if computed is not None:  # counted as one process would: made once, by some rank
        batch.computed, batch.reused = computed, len(plans) - computed
    batch.skipped = planned.skipped
    ctx.log(f"  {batch.computed} edit(s) computed, {batch.reused} from the cache; models loaded: {', '.join(editor.models_loaded) or 'none'}")
    return batch


def _rewriter(spec: EditSpec, questions: list[Question], ctx: EditContext) -> Callable:
    from vseam_run.edit import models
    from vseam_run.edit.rewriter import load_examples, make_rewrite, model_generator

    ref = spec.text.rewriter
    assert ref is not None
    model, tok = models.load_transformers(ref, "rewriter", ctx.device)
    gen = model_generator(model, tok, ctx.device, spec.text.max_new_tokens)
    return make_rewrite(gen, load_examples(spec.text.examples), {q.qid: q for q in questions}, spec.text, ref.label())


# --- recording --------------------------------------------------------------------------------


def _store(ctx: EditContext, batch: EditBatch) -> None:
    manifest = [r.to_json() for r in batch.all]
    ctx.art_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.art_dir / "edits.json"
    path.write_text(json.dumps(manifest, indent=1))
    ctx.store.add_artifact(ctx.run_id, "edits.manifest", path)
    ctx.store.put_document(ctx.run_id, "edits", manifest)
    if batch.skipped:
        ctx.store.put_document(ctx.run_id, "edit.skipped", [{"qid": s.qid, "reason": s.reason} for s in batch.skipped])
    if ctx.spec.edit is not None and ctx.spec.edit.recipe == "inpaint":
        # Generated files get their own artifact rows (hash included); the toy world's exact
        # re-renders (hundreds per run, remade at will) are listed in the manifest only.
        for r in batch.all:
            ctx.store.add_artifact(ctx.run_id, "edit.mask", r.mask_path)
            ctx.store.add_artifact(ctx.run_id, "edit.image", r.edited_image)
    summary = batch.summary()
    ctx.store.put_document(ctx.run_id, "edit.summary", {**summary, "dropped": [{"qid": r.qid, "reason": r.reason} for r in batch.dropped]})
    ctx.record(summary)
    ctx.log(_summary_line(summary))
    if batch.dropped:
        ctx.log(f"  {len(batch.dropped)} edit(s) failed a check and are dropped: {batch.dropped[0].qid}: {batch.dropped[0].reason}"
                + (" …" if len(batch.dropped) > 1 else ""))  # fmt: skip


def _summary_line(m: dict[str, float]) -> str:
    """The per-run edit-quality summary in one line."""
    parts = [f"  edits: {m['edit.kept']:.0f} kept, {m['edit.dropped']:.0f} dropped, {m['edit.skipped']:.0f} questions skipped"]
    if "edit.outside_change_max" in m:
        parts.append(f"max change outside masks {m['edit.outside_change_max']:g}, mean inside {m['edit.inside_change_mean']:.1f}")
    if "edit.concept_prob_mean" in m:
        parts.append(f"CLIP P(target) mean {m['edit.concept_prob_mean']:.2f} (gain {m['edit.concept_gain_mean']:+.2f})")
    return "; ".join(parts)


def _score_edited(ctx: EditContext, batch: EditBatch, by_qid: dict[str, Question], base_rows: dict[str, dict]) -> list[dict]:
    """The model on the kept edited images, gold = the answer the edit should get."""
    if ctx.vlm is None or not batch.kept:
        return []
    gold = ctx.vlm.answer_token_ids([r.expected_answer for r in batch.kept])
    items = []
    for r, g in zip(batch.kept, gold):
        if g is None:
            continue
        with Image.open(r.edited_image) as im:
            items.append(Item(r.qid, im.convert("RGB"), by_qid[r.qid].question, r.expected_answer, g, r.category))
    rows = ScoredSet.score_once(ctx.vlm, items, ctx.spec.batch_size, "edited")
    ctx.store.log_question_results(ctx.run_id, "edited", rows)
    flipped = [r["pred"] != base_rows[r["qid"]]["pred"] for r in rows if r["qid"] in base_rows]
    ctx.record({"edit.count": len(batch.kept), "edit.accuracy": accuracy(rows),
                "edit.prediction_flip_rate": float(np.mean(flipped)) if flipped else 0.0})  # fmt: skip
    ctx.log(f"  {len(batch.kept)} edits kept; accuracy on edited images {accuracy(rows):.3f}")
    return rows


def _sheet(ctx: EditContext, batch: EditBatch, base: dict[str, dict], edited: dict[str, dict], n: int) -> None:
    rows = [
        SheetRow(
            qid=r.qid, category=r.category, question=r.question, original=r.original_image, mask=r.mask_path, edited=r.edited_image,
            edit_text=r.text, original_gold=r.original_answer, edited_gold=r.expected_answer,
            original_pred=base.get(r.qid, {}).get("pred"), original_prob=base.get(r.qid, {}).get("gold_prob"),
            edited_pred=edited.get(r.qid, {}).get("pred"), edited_prob=edited.get(r.qid, {}).get("gold_prob"),
            status=("kept" if r.passed else f"dropped: {r.reason}")
            + (f" · CLIP P(target) {r.concept.target_prob:.2f} (orig {r.concept.target_prob_original:.2f})" if r.concept else ""),
        )
        for r in batch.all
    ]  # fmt: skip
    chosen = sample_across(rows, n)
    path = edit_sheet(chosen, ctx.art_dir / "edits.png", title=f"counterfactual edits — {ctx.spec.name}")
    ctx.store.add_artifact(ctx.run_id, "edits.contact_sheet", path)
    ctx.store.put_document(ctx.run_id, "edit.contact_sheet", [{"qid": r.qid, "category": r.category} for r in chosen])


def edit_model_problems(spec: EditSpec) -> list[str]:
    """The edit stage's models (and files) missing on this machine, as `field: problem` lines,
    for pipeline.preflight: a spec with absent weights stops at once, listing all of them."""
    from vseam_run.edit import models

    if spec.recipe != "inpaint":
        return []
    problems = models.missing({
        "inpaint": spec.inpaint.model, "sam": spec.mask.sam if spec.mask.source == "sam" else None,
        "clip": spec.check.clip, "rewriter": spec.text.rewriter,
    })  # fmt: skip
    for name, path in (("edit.text.scene_graphs", spec.text.scene_graphs), ("edit.text.examples", spec.text.examples)):
        if path is not None and not Path(path).is_file():
            problems.append(f"{name}: file not found: {path}")
    return problems


def skipped_reasons(skipped: list[EditSkip]) -> dict[str, int]:
    """How many questions were skipped for each reason (the reason up to its first ':' / quote)."""
    out: dict[str, int] = {}
    for s in skipped:
        k = s.reason.split(":")[0].split("'")[0].strip()
        out[k] = out.get(k, 0) + 1
    return out
