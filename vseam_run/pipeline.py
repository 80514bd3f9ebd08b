"""Runs a spec's stages in order and records everything in the run registry.

Only this module knows the order: data → edits → baseline → head search → modulation →
held-out evaluation → ablation validation. Each stage is library code that takes what the
earlier ones produced; this module feeds them and writes their results to the store as soon
as each is done, so a failure, Ctrl-C or SIGTERM loses nothing already computed.

Each stage runs through the run's `StageLedger` (see `vseam_run.ledger`) with a fingerprint
of its inputs (`vseam_run.fingerprint`): `--resume` takes a finished stage's stored outputs
instead of recomputing it (its stored rows are never written again), continues a head search
from its next unfinished layer, and refuses to mix results of different inputs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vseam_run import evaluate, lifecycle, modulate, registry, report
from vseam_run.data import LoadResult, load_questions
from vseam_run.data.base import Question
from vseam_run.data.toyworld import ToyWorldParams
from vseam_run.device import resolve_device, resolve_dtype
from vseam_run.errors import VseamError
from vseam_run.fingerprint import Fingerprint, fingerprint, items_part, model_part, questions_part, spec_changes
from vseam_run.heads import ablate_heads_edits, scale_edits
from vseam_run.ledger import StageCheckpointer, StageLedger
from vseam_run.scoring import Item, ScoredSet, accuracy
from vseam_run.search import SearchItem, SearchResult, search_heads
from vseam_run.search.scoring import ranking_matrices
from vseam_run.spec import ExtraDataSpec, Spec, data_file_problems
from vseam_run.splits import split_by_image
from vseam_run.store import RunStore
from vseam_run.vlm import VLM, weights_source

Log = Callable[[Any], None]  # takes strings and rich renderables (tables)


def _print(obj: Any) -> None:
    from rich.console import Console

    Console().print(obj, markup=False, highlight=False)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("vseam", "torch", "transformers", "diffusers", "pydantic", "sqlalchemy", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class RunOutcome:
    run_id: str
    metrics: dict[str, float]


__all__ = ["RunOutcome", "StageCheckpointer", "preflight", "run"]


def preflight(spec: Spec) -> tuple[registry.ModelEntry, torch.device]:
    """Everything a run needs that can be checked before loading anything: the device, the
    model weights and the data files. All problems are reported together, at once."""
    entry = registry.get_entry(spec.model)
    problems: list[str] = []
    device = None
    try:
        device = resolve_device(spec.device)
    except VseamError as e:
        problems.append(str(e))
    try:
        weights_source(entry)
    except VseamError as e:
        problems.append(f"model: {e}")
    problems += data_file_problems(spec)
    if problems:
        raise VseamError(f"spec '{spec.name}' cannot run on this machine:\n  " + "\n  ".join(problems))
    assert device is not None
    return entry, device


def check_resumable(store: RunStore, run_id: str, spec: Spec, *, force: bool = False) -> None:
    """Refuse to resume a run that succeeded, that still looks alive (unless `force`), or with a
    spec that differs from the one that produced its results."""
    record = store.get_run(run_id)
    if record.status == "succeeded":
        raise VseamError(f"run {run_id} already succeeded; nothing to resume")
    if record.status == "running" and not record.is_lost() and not force:
        raise VseamError(
            f"run {run_id} is still running (host {record.host}, pid {record.pid}, last heartbeat "
            f"{record.heartbeat_age_s():.0f}s ago)",
            hint="wait for it or stop it; if you know it is dead, resume with --force",
        )
    changed = spec_changes(validate_stored_spec(record.spec_yaml, run_id), spec)
    if changed:
        raise VseamError(
            f"run {run_id} was computed with another value of {', '.join(changed)}; a resumed run keeps "
            "the spec that produced its results",
            hint="start a new run with the changed setting: vseam run SPEC --set FIELD=VALUE",
        )


def validate_stored_spec(spec_yaml: str, run_id: str) -> Spec:
    """The spec a run was started with, parsed back from the registry."""
    from vseam_run.spec import validate_doc
    from vseam_run.yamlio import parse_yaml

    return validate_doc(parse_yaml(spec_yaml, f"run {run_id} spec"), f"run {run_id} spec", [])


def run(
    spec: Spec,
    store: RunStore,
    *,
    resume: str | None = None,
    force: bool = False,
    log: Log = _print,
    heartbeat_s: float | None = None,
    resume_options: str = "",
) -> RunOutcome:
    """Run every stage of `spec`; with `resume`, continue that run id instead of starting one.
    `resume_options` ends the printed resume command (e.g. " --db results.db").

    SIGTERM / SIGHUP end the run like Ctrl-C: it is recorded as interrupted and a
    `lifecycle.RunInterrupted` (a KeyboardInterrupt carrying the exit code) is raised.
    """
    entry, device = preflight(spec)
    if resume:
        run_id = resume
        check_resumable(store, run_id, spec, force=force)
        store.mark_resumed(run_id)
        log(f"resuming run {run_id}")
    else:
        run_id = store.create_run(
            name=spec.name, spec_yaml=spec.to_yaml(), spec_hash=spec.content_hash(), model_name=entry.name,
            model_entry_yaml=entry.to_yaml(), model_hash=entry.content_hash(), versions=package_versions(),
            device=str(device), seed=spec.seed,
        )
        log(f"run {run_id} ({spec.name}) on {device}")
    beat = lifecycle.heartbeat(store, run_id, heartbeat_s or lifecycle.HEARTBEAT_INTERVAL_S)
    # The signal handlers stay installed while the outcome is recorded, so a second SIGTERM
    # (ignored there) cannot kill the process between the interruption and its record.
    with lifecycle.signals_interrupt():
        try:
            with beat:
                metrics = _Stages(spec, store, run_id, entry, device, log).run_all()
        except KeyboardInterrupt as e:
            cause = lifecycle.interrupt_cause(e)
            store.set_status(run_id, "interrupted", error_message=f"interrupted ({cause})")
            log(f"run {run_id} interrupted ({cause}); what was computed is kept. "
                f"Continue with: vseam run --resume {run_id}{resume_options}")
            raise
        except VseamError as e:
            store.set_status(run_id, "failed", error_message=str(e), error_traceback=traceback.format_exc())
            raise
        except Exception as e:
            store.set_status(run_id, "failed", error_message=f"{type(e).__name__}: {e}", error_traceback=traceback.format_exc())
            raise
        store.set_status(run_id, "succeeded")
    return RunOutcome(run_id, metrics)


class _Stages:
    def __init__(self, spec: Spec, store: RunStore, run_id: str, entry, device: torch.device, log: Log) -> None:
        self.spec, self.store, self.run_id, self.entry, self.device, self.log = spec, store, run_id, entry, device, log
        self.ledger = StageLedger(store, run_id, log)
        # A resumed run starts from what its finished stages recorded.
        self.metrics: dict[str, float] = dict(store.get_run(run_id).metrics) if self.ledger.finished() else {}
        self.art_dir = Path(spec.workdir) / "runs" / run_id
        self.cache_dir = Path(spec.workdir) / "cache"

    # ---- helpers -------------------------------------------------------------------------

    def record(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
        self.store.log_metrics(self.run_id, metrics)

    def artifact(self, kind: str, path: Path) -> None:
        self.store.add_artifact(self.run_id, kind, path)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Log the stage's start and record `time.<name>` when it finishes without error."""
        t0 = time.perf_counter()
        self.log(f"· {name} …")
        yield
        self.record({f"time.{name}": time.perf_counter() - t0})

    def stage(self, name: str, fp: Fingerprint, compute: Callable[[], Any], **save_load: Any) -> Any:
        """Run `compute` as stage `name` (timed), or take its stored outputs when it finished
        earlier from the same inputs; see `vseam_run.ledger`."""

        def timed_compute() -> Any:
            with self.timed(name):
                return compute()

        return self.ledger.run(name, fp, timed_compute, **save_load)

    # ---- stages --------------------------------------------------------------------------

    def run_all(self) -> dict[str, float]:
        spec = self.spec
        # The data are the input: read again on resume (the images are needed) and checked
        # against the fingerprint of the finished data stage, never recorded twice.
        loaded = self._load(spec.data, spec.data.toyworld)
        splits = split_by_image(loaded.questions, spec.data.split.model_dump(), spec.seed)
        split_of = {q.qid: s for s, qs in splits.items() for q in qs}
        data_fp = fingerprint(data=spec.data, seed=spec.seed, questions=questions_part(loaded.questions, split_of),
                              skipped=loaded.skipped)
        self.stage("data", data_fp, lambda: self._record_data(loaded, splits))
        with self.timed("load_model"):
            dtype = resolve_dtype(spec.dtype, self.entry.dtype, self.device)
            self.vlm = VLM.load(self.entry, self.device, dtype)
        self.model = model_part(self.entry, self.device, dtype)
        items, untokenizable = self._items(loaded.questions, split_of, "data")
        baseline_fp = fingerprint(model=self.model, questions=items_part(items), untokenizable=untokenizable,
                                  batch_size=spec.batch_size)
        # The rows are in the registry already; the ledger entry need not hold them twice.
        rows = self.stage("baseline", baseline_fp, lambda: self._baseline(items, untokenizable),
                          save=len, load=lambda _: self.store.question_results(self.run_id, "baseline"))
        if spec.edit is not None:
            edit_fp = fingerprint(baseline=baseline_fp, edit=spec.edit, questions=questions_part(loaded.questions))
            self.stage("edit", edit_fp, lambda: self._edits(loaded.questions, {r["qid"]: r for r in rows}))
        if spec.search is None:
            return self.metrics
        by_split = {s: [it for it in items if it.split == s] for s in ("search", "val", "test")}
        search_fp = fingerprint(model=self.model, questions=items_part(by_split["search"]), search=spec.search,
                                batch_size=spec.batch_size)
        result = self.stage("search", search_fp, lambda: self._search(by_split["search"], search_fp),
                            save=SearchResult.to_state, load=SearchResult.from_state)
        if spec.modulation is not None or spec.evaluate is not None:
            self._modulate_and_evaluate(result, search_fp, by_split)
        return self.metrics

    def _record_data(self, loaded: LoadResult, splits: dict[str, list[Question]]) -> None:
        self.record({"data.questions": len(loaded.questions), "data.skipped": len(loaded.skipped),
                     **{f"data.{s}": len(qs) for s, qs in splits.items()}})
        if loaded.skipped:
            self.store.put_document(self.run_id, "skipped", [{"qid": q, "reason": r} for q, r in loaded.skipped])
            self.log(f"  skipped {len(loaded.skipped)} question(s) (see `vseam show {self.run_id} --json`, key 'skipped')")

    def _baseline(self, items: list[Item], untokenizable: list[str]) -> list[dict]:
        self._record_untokenizable("data", untokenizable)
        # One streaming pass: an encoded set of every question would hold GBs for a 7B model.
        rows = ScoredSet.score_once(self.vlm, items, self.spec.batch_size, "baseline")
        self.store.log_question_results(self.run_id, "baseline", rows)
        self.record(evaluate.summarize(rows).as_metrics("baseline"))
        self.log(f"  baseline accuracy {self.metrics['baseline.accuracy']:.3f} on {len(rows)} questions")
        return rows

    def _load(self, d, toy) -> LoadResult:
        params = ToyWorldParams(seed=toy.seed if toy.seed is not None else self.spec.seed, images=toy.images, image_size=toy.image_size)
        return load_questions(
            d.source, d.path, d.images, level=d.level, categories=d.categories, limit=d.limit,
            on_missing_image=d.on_missing_image, toyworld=params, cache_dir=self.cache_dir,
        )

    def _items(self, questions: list[Question], split_of: dict[str, str], stage: str) -> tuple[list[Item], list[str]]:
        """Scorable items, and the ids of questions whose answer the tokenizer cannot score."""
        gold = self.vlm.answer_token_ids([q.answer for q in questions])
        items, empty = [], []
        for q, g in zip(questions, gold):
            if g is None:
                empty.append(q.qid)
                continue
            items.append(Item(q.qid, q.load_image(), q.question, q.answer, g, q.category, split_of.get(q.qid, "")))
        if not items:
            raise VseamError(f"{stage}: no question has an answer the model's tokenizer can score")
        return items, empty

    def _record_untokenizable(self, stage: str, empty: list[str]) -> None:
        if empty:
            self.record({f"{stage}.answers_without_token": len(empty)})
            self.store.put_document(self.run_id, f"{stage}.answers_without_token", empty)
            self.log(f"  {len(empty)} answer(s) tokenize to nothing the model knows; skipped: {', '.join(empty[:5])}"
                     + (" …" if len(empty) > 5 else ""))

    def _edits(self, questions: list[Question], base_rows: dict[str, dict]) -> None:
        from vseam_run.edit.procedural import make_edits

        edits = make_edits(questions, self.cache_dir / "edits", progress=True)
        manifest = [{"qid": e.qid, "edit": e.edit_text, "original_answer": e.original_answer, "edited_answer": e.edited_answer,
                     "image": str(e.image_path), "mask": str(e.mask_path)} for e in edits]
        self.art_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = self.art_dir / "edits.json"
        manifest_path.write_text(json.dumps(manifest, indent=1))
        self.artifact("edits.manifest", manifest_path)
        by_qid = {q.qid: q for q in questions}
        sample = [(by_qid[e.qid].image_path, e.image_path, e.mask_path, f"{by_qid[e.qid].question}\n{e.edit_text}: "
                   f"{e.original_answer} → {e.edited_answer}") for e in edits[:: max(1, len(edits) // 8)][:8]]
        self.artifact("edits.contact_sheet", report.edit_contact_sheet(sample, self.art_dir / "edits.png", title=f"counterfactual edits — {self.spec.name}"))
        # Baseline on the counterfactual images: does the model follow the concept change?
        from PIL import Image

        gold = self.vlm.answer_token_ids([e.edited_answer for e in edits])
        items = []
        for e, g in zip(edits, gold):
            if g is None:
                continue
            with Image.open(e.image_path) as im:
                items.append(Item(e.qid, im.convert("RGB"), by_qid[e.qid].question, e.edited_answer, g, by_qid[e.qid].category))
        rows = ScoredSet.score_once(self.vlm, items, self.spec.batch_size, "edited")
        self.store.log_question_results(self.run_id, "edited", rows)
        flipped = [r["pred"] != base_rows[r["qid"]]["pred"] for r in rows if r["qid"] in base_rows]
        self.record({"edit.count": len(edits), "edit.accuracy": accuracy(rows),
                     "edit.prediction_flip_rate": float(np.mean(flipped)) if flipped else 0.0})
        self.log(f"  {len(edits)} edits; accuracy on edited images {self.metrics['edit.accuracy']:.3f}")

    def _search(self, items: list[Item], fp: Fingerprint) -> SearchResult:
        s = self.spec.search
        assert s is not None
        if not items:
            raise VseamError("search: the search split is empty", hint="raise data.split.search or use more questions")
        result = search_heads(
            self.vlm, [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in items],
            strategy=s.strategy, scoring=s.scoring, ablation=s.ablation, top_k=s.top_k, verify_k=s.verify_k,
            batch_size=self.spec.batch_size, batch_rows=s.batch_rows,
            checkpoint=self.ledger.checkpointer("search", fp),
        )
        heads = result.to_json()
        self.store.put_document(self.run_id, "heads", heads)
        self.record({"search.seconds": result.seconds, "search.questions": len(items),
                     "search.correct": result.matrices.n_correct, "search.wrong": result.matrices.n_wrong})
        m = result.matrices
        counts = f"{s.strategy}, {s.ablation} ablation; n = {m.n_correct} correct / {m.n_wrong} wrong questions"
        self.art_dir.mkdir(parents=True, exist_ok=True)
        for kind, matrix, label, center in (
            ("positive", m.positive, "mean ReLU(base − ablated), correct questions", False),
            ("negative", m.negative, "mean ReLU(ablated − base), wrong questions", False),
            ("signed", m.signed, "mean (base − ablated) gold prob", True),
        ):
            path = report.head_heatmap(matrix, self.art_dir / f"heads_{kind}.png", title=f"{kind} heads — {self.spec.name}",
                                       cbar_label=label, counts=counts, center=center)
            self.artifact(f"heatmap.{kind}", path)
        self.log(f"  search {s.strategy}: {result.seconds:.1f}s; top positive {m.top_positive[:3]}, top negative {m.top_negative[:3]}")
        return result

    # ---- modulation, evaluation, ablation --------------------------------------------------

    def _scales(self, result: SearchResult, lam: float | None = None) -> torch.Tensor:
        pol = self.spec.modulation
        m = result.matrices
        if pol is None or pol.policy == "none":
            return torch.ones(m.signed.shape)
        if pol.policy == "topk":
            return torch.as_tensor(modulate.topk_scales(m.positive, m.negative, pol.k, pol.alpha, pol.beta), dtype=torch.float32)
        score = modulate.head_score(m.positive, m.negative, m.signed, pol.score)
        lo, hi = pol.clip
        return torch.as_tensor(modulate.linear_scales(score, lam, lo, hi, pol.eps), dtype=torch.float32)

    def _modulate_and_evaluate(self, result: SearchResult, search_fp: Fingerprint, by_split: dict[str, list[Item]]) -> None:
        """Sub-stages, each finished on its own: modulation (λ), eval.test, eval.<extra>…, ablation."""
        spec = self.spec
        if not by_split["test"]:
            raise VseamError("evaluate: the test split is empty", hint="raise data.split.test or use more questions")
        test_set: list[ScoredSet] = []

        def test() -> ScoredSet:  # encoded once, and only when a stage still needs it
            if not test_set:
                test_set.append(ScoredSet(self.vlm, by_split["test"], spec.batch_size, "test"))
            return test_set[0]

        mod_fp = fingerprint(search=search_fp, modulation=spec.modulation, questions=items_part(by_split["val"]),
                             batch_size=spec.batch_size)
        scales = self.stage("modulation", mod_fp, lambda: self._modulation(result, by_split["val"]),
                            save=lambda t: t.tolist(), load=lambda saved: torch.tensor(saved, dtype=torch.float32))
        edits = scale_edits(scales)
        ev = spec.evaluate
        bootstrap = ev.bootstrap if ev else 2000
        test_fp = fingerprint(modulation=mod_fp, questions=items_part(by_split["test"]), bootstrap=bootstrap,
                              seed=spec.seed, batch_size=spec.batch_size)
        self.stage("eval.test", test_fp, lambda: self._compare(test(), edits, "eval.test", "test"))
        for extra in (ev.extra if ev else []):
            extra_fp = fingerprint(modulation=mod_fp, extra=extra, bootstrap=bootstrap, seed=spec.seed, batch_size=spec.batch_size)
            self.stage(f"eval.{extra.name}", extra_fp, lambda extra=extra: self._evaluate_extra(extra, edits))
        if ev is not None and ev.ablation is not None:
            ablation_fp = fingerprint(search=search_fp, questions=items_part(by_split["test"]), ablation=ev.ablation,
                                      seed=spec.seed, batch_size=spec.batch_size)
            self.stage("ablation", ablation_fp, lambda: self._ablation(result, test()))

    def _modulation(self, result: SearchResult, val_items: list[Item]) -> torch.Tensor:
        """The head scales: λ chosen on the val split when asked, then the policy's scales."""
        spec, pol = self.spec, self.spec.modulation
        lam = None
        if pol is not None and pol.policy == "linear":
            if pol.lam == "auto":
                if not val_items:
                    raise VseamError("modulation.lam: auto needs a val split", hint="set data.split.val > 0 or give λ as a number")
                val = ScoredSet(self.vlm, val_items, spec.batch_size, "val")
                choice = modulate.select_lambda(pol.grid, lambda l: accuracy(val.run(scale_edits(self._scales(result, l)))))
                lam = choice.best
                self.store.put_document(self.run_id, "lambda_selection", [{"lam": p.lam, "val_accuracy": p.val_accuracy} for p in choice.table])
                self.artifact("lambda_curve", report.lambda_curve(choice, self.art_dir / "lambda_curve.png"))
                self.log("  λ on val: " + ", ".join(f"{p.lam:g}→{p.val_accuracy:.3f}" for p in choice.table) + f"; chose {lam:g}")
            else:
                lam = float(pol.lam)
            self.record({"modulation.lambda": lam})
        scales = self._scales(result, lam)
        self.store.put_document(self.run_id, "modulation", {"policy": pol.policy if pol else "none", "lambda": lam,
                                                            "scales": scales.tolist()})
        return scales

    def _compare(self, scored: ScoredSet, edits, prefix: str, label: str) -> None:
        base_rows, mod_rows = scored.run(), scored.run(edits)
        self.store.log_question_results(self.run_id, f"{prefix}.baseline", base_rows)
        self.store.log_question_results(self.run_id, f"{prefix}.modulated", mod_rows)
        cmp = evaluate.compare_arms(base_rows, mod_rows, n_boot=self.spec.evaluate.bootstrap if self.spec.evaluate else 2000,
                                    seed=self.spec.seed)
        self.record(cmp.as_metrics(prefix))
        self.store.put_document(self.run_id, f"{prefix}.summary", report.comparison_rows(cmp, context={"dataset": label}))
        self.log("")
        self.log(report.comparison_table(cmp, title=f"{label}: baseline vs modulated (n = {cmp.n})"))

    def _evaluate_extra(self, extra: ExtraDataSpec, edits) -> None:
        loaded = self._load(extra, extra.toyworld)
        items, untokenizable = self._items(loaded.questions, {}, f"eval.{extra.name}")
        self._record_untokenizable(f"eval.{extra.name}", untokenizable)
        self._compare(ScoredSet(self.vlm, items, self.spec.batch_size, extra.name), edits, f"eval.{extra.name}", extra.name)

    def _ablation(self, result: SearchResult, test: ScoredSet) -> None:
        ab = self.spec.evaluate.ablation
        H = self.vlm.num_heads
        base = test.run()
        base_acc, base_prob = accuracy(base), float(np.mean([r["gold_prob"] for r in base]))

        def drops(heads: list[tuple[int, int]]) -> tuple[float, float]:
            rows = test.run(ablate_heads_edits(heads, H, ab.mode))
            return base_acc - accuracy(rows), base_prob - float(np.mean([r["gold_prob"] for r in rows]))

        pos_rank, neg_rank = ranking_matrices(result.effects, result.correct, self.spec.search.scoring)
        pos = [(l, h) for l, h, _ in modulate.top_heads(pos_rank, ab.k)]
        neg = [(l, h) for l, h, _ in modulate.top_heads(neg_rank, ab.k)]
        rng = np.random.default_rng(self.spec.seed)
        random_drops = [drops(modulate.random_heads(self.vlm.num_layers, H, ab.k, rng)) for _ in range(ab.trials)]
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
        self.record(metrics)
        self.store.put_document(self.run_id, "ablation", {"positive_heads": pos, "negative_heads": neg, "results": results})
        for metric in ("accuracy_drop", "gold_prob_drop"):
            path = report.ablation_bar_chart({k: v[metric] for k, v in results.items()}, self.art_dir / f"ablation_{metric}.png",
                                             metric=metric, title=f"zero-ablating {ab.k} heads — {self.spec.name}")
            self.artifact(f"ablation.{metric}", path)
        def fmt(name: str) -> str:
            v = metrics.get(f"ablation.{name}.accuracy_drop")
            return "n/a (no such heads)" if v is None else f"{v:+.3f}"

        self.log(f"  ablation (k={ab.k}), accuracy drop: positive {fmt('positive')}, negative {fmt('negative')}, "
                 f"random {metrics['ablation.random.accuracy_drop']:+.3f} ± {metrics['ablation.random.accuracy_drop_std']:.3f}")
