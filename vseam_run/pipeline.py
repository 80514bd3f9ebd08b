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

import atexit
import contextlib
import importlib.metadata
import platform
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from vseam_run import dist, evaluate, fmt, lifecycle, registry, report
from vseam_run.data import LoadResult, load_questions
from vseam_run.data.base import Question
from vseam_run.data.toyworld import ToyWorldParams
from vseam_run.device import resolve_device, resolve_dtype
from vseam_run.placement import placement_report
from vseam_run.errors import VseamError
from vseam_run.fingerprint import Fingerprint, fingerprint, items_part, model_part, questions_part, spec_changes
from vseam_run.ledger import StageCheckpointer, StageLedger
from vseam_run.progress import silence_libraries
from vseam_run.scoring import Item, ScoredSet
from vseam_run.search import SearchItem, SearchResult, search_heads
from vseam_run.search.uncertainty import encode_effects, head_uncertainty
from vseam_run.spec import ExtraDataSpec, Spec
from vseam_run.stages import trace as trace_stage
from vseam_run.splits import split_by_image
from vseam_run.store import RunStore
from vseam_run.vlm import VLM

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
    """Everything a run needs that can be checked before loading anything (checks.py): the
    device, the weights, head counts against the model's config, the workdir and every
    question file. All problems are reported together, at once."""
    from vseam_run.checks import machine_problems

    from vseam_run.placement import with_spec

    entry = with_spec(registry.get_entry(spec.model), spec)  # the spec's device_map / quantization over the entry's
    problems = machine_problems(spec, entry)
    if spec.edit is not None:
        from vseam_run.stages.edit import edit_model_problems

        problems += edit_model_problems(spec.edit)
    if problems:
        raise VseamError(f"spec '{spec.name}' cannot run on this machine:\n  " + "\n  ".join(problems))
    return entry, resolve_device(spec.device)


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
    on_created: Callable[[str], None] | None = None,
    resume_options: str = "",
    reuse_search: bool = False,
) -> RunOutcome:
    """Run every stage of `spec`; with `resume`, continue that run id instead of starting one.
    `resume_options` ends the printed resume command (e.g. " --db results.db").
    `reuse_search`: take another run's head search from the same inputs (stages/search_reuse.py).

    SIGTERM / SIGHUP end the run like Ctrl-C: it is recorded as interrupted and a
    `lifecycle.RunInterrupted` (a KeyboardInterrupt carrying the exit code) is raised.
    `on_created(run_id)` is called once the run is recorded (a sweep tags it there).
    """
    entry, device = preflight(spec)
    with dist.session(device) as world:  # under torchrun: one of several ranks (vseam_run/dist.py)
        if not world.main:  # only rank 0 writes the registry and the log
            store, log, on_created = dist.MainOnlyStore(store), _silent, None
        return _run(spec, store, entry, dist.device_for(device, world), resume=resume, force=force, log=log,
                    heartbeat_s=heartbeat_s, on_created=on_created, resume_options=resume_options,
                    reuse_search=reuse_search and not world.active)


def _silent(_: Any) -> None:
    pass


def _open_run(spec: Spec, store: RunStore, entry, device: torch.device, resume: str | None, force: bool, log: Log) -> str:
    """The run's id: `resume` checked and marked resumed, or a new run recorded."""
    if entry.remote_code_notice():
        log(entry.remote_code_notice())
    if resume:
        check_resumable(store, resume, spec, force=force)
        store.mark_resumed(resume)
        log(f"resuming run {resume}")
        from vseam_run.rebuild import rebuild_missing

        rebuilt = rebuild_missing(store, resume)  # e.g. edits.json, from its stored document
        if rebuilt:
            log(f"  rebuilt from the registry: {', '.join(Path(p).name for p in rebuilt)}")
        gone = [a for a in store.get_run(resume).artifacts if a.state() != "present"]
        if gone:  # e.g. the workdir was deleted: finished stages are not run again to redraw them
            log(f"  {len(gone)} file(s) registered by finished stages are gone or changed: "
                + ", ".join(Path(a.path).name for a in gone[:5]) + (" …" if len(gone) > 5 else "")
                + "; `vseam show` marks them; their numbers are in the registry")
        return resume
    run_id = store.create_run(
        name=spec.name, spec_yaml=spec.to_yaml(), spec_hash=spec.content_hash(), model_name=entry.name,
        model_entry_yaml=entry.to_yaml(), model_hash=entry.content_hash(), versions=package_versions(),
        device=str(device), seed=spec.seed,
    )
    log(f"run {run_id} ({spec.name}) on {device}" + (f", {dist.world().size} processes" if dist.world().active else ""))
    return run_id


def _run(spec: Spec, store: RunStore, entry, device: torch.device, *, resume: str | None, force: bool, log: Log,
         heartbeat_s: float | None, on_created: Callable[[str], None] | None, resume_options: str = "",
         reuse_search: bool = False) -> RunOutcome:
    run_id = dist.main_decides(lambda: _open_run(spec, store, entry, device, resume, force, log))
    if on_created is not None:
        on_created(run_id)
    beat = lifecycle.heartbeat(store, run_id, heartbeat_s or lifecycle.HEARTBEAT_INTERVAL_S)
    # The signal handlers stay installed while the outcome is recorded, so a second SIGTERM
    # (ignored there) cannot kill the process between the interruption and its record.
    with lifecycle.signals_interrupt() as signals:
        try:
            with beat:
                stages = _Stages(spec, store, run_id, entry, device, log)
                stages.reuse_search = reuse_search
                dist.barrier()  # every rank has read the ledger before rank 0 writes to it
                metrics = stages.run_all()
        except KeyboardInterrupt as e:
            signals.settle()  # from here a signal cannot cut the record short
            cause = lifecycle.interrupt_cause(e)
            store.set_status(run_id, "interrupted", error_message=f"interrupted ({cause})")
            log(f"run {run_id} interrupted ({cause}); what was computed is kept. "
                f"Continue with: vseam run --resume {run_id}{resume_options}")
            raise
        except VseamError as e:
            signals.settle()
            store.set_status(run_id, "failed", error_message=str(e), error_traceback=traceback.format_exc())
            raise
        except Exception as e:
            signals.settle()
            store.set_status(run_id, "failed", error_message=f"{type(e).__name__}: {e}", error_traceback=traceback.format_exc())
            raise
        signals.settle()
        store.set_status(run_id, "succeeded")
    return RunOutcome(run_id, metrics)


class _Stages:
    def __init__(self, spec: Spec, store: RunStore, run_id: str, entry, device: torch.device, log: Log) -> None:
        self.spec, self.store, self.run_id, self.entry, self.device, self.log = spec, store, run_id, entry, device, log
        self.ledger = StageLedger(store, run_id, log)
        # A resumed run starts from what its finished stages recorded.
        self.metrics: dict[str, float] = dict(store.get_run(run_id).metrics) if self.ledger.finished() else {}
        self.art_dir = Path(spec.workdir) / "runs" / run_id
        if not dist.world().main:  # rank 0 draws the figures; the others' copies go to a scratch folder
            self.art_dir = Path(tempfile.mkdtemp(prefix=f"vseam-rank{dist.world().rank}-"))
            atexit.register(shutil.rmtree, self.art_dir, True)
        self.cache_dir = Path(spec.workdir) / "cache"
        self._answer_of: dict[str, str] = {}

    # ---- helpers -------------------------------------------------------------------------

    def record(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
        self.store.log_metrics(self.run_id, metrics)

    def artifact(self, kind: str, path: Path) -> None:
        self.store.add_artifact(self.run_id, kind, path)
        for extra in report.companions(path):  # SVG/PDF copies asked for in VSEAM_FIGURE_FORMATS
            self.store.add_artifact(self.run_id, f"{kind}{extra.suffix}", extra)

    @property
    def label(self) -> str:
        """Spec name, run id and seed: what tells two figures of a sweep apart."""
        return f"{self.spec.name} · {self.run_id} · seed {self.spec.seed}"

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
        with dist.main_first():  # rank 0 fills the image cache, the others read it
            loaded = self._load(spec.data, spec.data.toyworld)
        splits = split_by_image(loaded.questions, spec.data.split.model_dump(), spec.seed)
        split_of = {q.qid: s for s, qs in splits.items() for q in qs}
        data_fp = fingerprint(data=spec.data, seed=spec.seed, questions=questions_part(loaded.questions, split_of),
                              skipped=loaded.skipped).with_files(self._file_stamps(spec.data, spec.data.toyworld, loaded))
        self.stage("data", data_fp, lambda: self._record_data(loaded, splits))
        with self.timed("load_model"):
            dtype = resolve_dtype(spec.dtype, self.entry.dtype, self.device)
            silence_libraries()  # VSEAM_QUIET=1 also hides transformers' weight-loading bar
            self.vlm = VLM.load(self.entry, self.device, dtype)
            self.record(placement_report(self.vlm, self.log))
        self.model = model_part(self.entry, self.device, dtype)
        items, untokenizable = self._items(loaded.questions, split_of, "data")
        # Every run, resumed ones too: the fast paths must give the model's own numbers (vlm.self_check),
        # and whether they are used at all is decided here.
        with self.timed("check"):
            self.record(self.vlm.self_check(items, fallback=spec.search is not None and spec.search.strategy == "reference"))
            # The check reruns on a resume; an unchanged verdict is not written again (its stamp stays).
            if self.store.documents(self.run_id).get("check.shortcuts") != self.vlm.shortcut_report():
                self.store.put_document(self.run_id, "check.shortcuts", self.vlm.shortcut_report())
        for name, sc in self.vlm.shortcut_report().items():
            if sc["state"] == "off":
                self.log(f"  fast path '{name}' off for this model: {sc['reason']}")
        if not self.vlm.replay:
            self.log("  every number from model(**inputs)")
        if spec.modulation is not None:  # a policy that cannot act on this model refuses now, not after the search
            from vseam_run.modulation import policy_for

            policy_for(spec.modulation).preflight(self.vlm, items)
        baseline_fp = fingerprint(model=self.model, questions=items_part(items), untokenizable=untokenizable,
                                  batch_size=spec.batch_size, answer_match=self._answer_match(), **self._generate_fp())
        # The rows are in the registry already; the ledger entry need not hold them twice.
        rows = self.stage("baseline", baseline_fp, lambda: self._baseline(items, untokenizable),
                          save=len, load=lambda _: self.store.question_results(self.run_id, "baseline"))
        if spec.edit is not None:
            edit_fp = fingerprint(baseline=baseline_fp, edit=spec.edit, questions=questions_part(loaded.questions))
            pairs = self.stage("edit", edit_fp, lambda: self._edits(loaded.questions, {r["qid"]: r for r in rows}),
                               save=trace_stage.pairs_state, load=trace_stage.pairs_from_state)
        if spec.trace is not None:
            # Pairs from this run's edit stage; without one, the toy world's exact procedural edits.
            trace_fp = fingerprint(baseline=baseline_fp, edit=edit_fp if spec.edit is not None else "procedural",
                                   trace=spec.trace)
            self.stage("trace", trace_fp, lambda: self._trace(loaded.questions, pairs if spec.edit is not None else None))
        if spec.search is None:
            return self.metrics
        by_split = {s: [it for it in items if it.split == s] for s in ("search", "val", "test")}
        search_fp = fingerprint(model=self.model, questions=items_part(by_split["search"]), search=spec.search,
                                batch_size=spec.batch_size)
        reuse = self._search_reuse_key(search_fp, data_fp) if self.reuse_search else None
        result = self.stage("search", search_fp, lambda: self._reused_search(by_split["search"], search_fp, reuse)
                            or self._search(by_split["search"], search_fp),
                            save=SearchResult.to_state, load=SearchResult.from_state)
        if reuse is not None:  # later runs with the same inputs may take this search
            from vseam_run.stages import search_reuse

            search_reuse.publish(self.store, self.run_id, reuse)
        if spec.modulation is not None or spec.evaluate is not None:
            self._modulate_and_evaluate(result, search_fp, by_split)
        return self.metrics

    def _record_data(self, loaded: LoadResult, splits: dict[str, list[Question]]) -> None:
        self.record({"data.questions": len(loaded.questions), "data.skipped": len(loaded.skipped),
                     **{f"data.{s}": len(qs) for s, qs in splits.items()}})
        if loaded.skipped:
            self.store.put_document(self.run_id, "skipped", [{"qid": q, "reason": r} for q, r in loaded.skipped])
            self.log(f"  skipped {len(loaded.skipped)} question(s) (see `vseam show {self.run_id} --json`, key 'skipped')")
        self._single_answer(loaded.questions)

    def _baseline(self, items: list[Item], untokenizable: list[str]) -> list[dict]:
        self._record_untokenizable("data", untokenizable)
        # One streaming pass: an encoded set of every question would hold GBs for a 7B model.
        rows = ScoredSet.score_once(self.vlm, items, self.spec.batch_size, "baseline")
        if self._answer_match() == "generate":  # judged on generated answers: stages/generated.py
            from vseam_run.stages.generated import baseline_generated

            rows = baseline_generated(self.vlm, items, evaluate.apply_answer_match(rows, "first_token"), self._generate(),
                                      self.spec.batch_size, self.record, lambda k, o: self.store.put_document(self.run_id, k, o), self.log)
        else:
            rows = evaluate.apply_answer_match(rows, self._answer_match())
        self.store.log_question_results(self.run_id, "baseline", rows)
        self.record(evaluate.summarize(rows).as_metrics("baseline"))
        self.log(f"  baseline accuracy {fmt.num(self.metrics['baseline.accuracy'])} on {len(rows)} questions")
        return rows

    def _single_answer(self, questions: list[Question]) -> None:
        from vseam_run.data import single_answer_groups

        single = single_answer_groups(questions)
        if single:
            self.store.put_document(self.run_id, "data.single_answer", single)
            self.record({f"data.single_answer.{k.replace('/', '.')}": 1 for k in single})
            self.log("  every question of " + ", ".join(f"{k} answers {a!r}" for k, a in single.items())
                     + ": accuracy there cannot tell a model from one that always says so")

    def _toy_params(self, toy) -> ToyWorldParams:
        return ToyWorldParams(seed=toy.seed if toy.seed is not None else self.spec.seed, images=toy.images, image_size=toy.image_size)

    def _file_stamps(self, d, toy, loaded: LoadResult) -> dict[str, str]:
        """Content hashes of every file the data stage read (question files, images): a file changed
        in place no longer matches the results computed from it (vseam_run/filestamps.py)."""
        from vseam_run.data.toyworld import ensure_toyworld
        from vseam_run.filestamps import CACHE_NAME, FileStamps, input_files

        toy_root = ensure_toyworld(self._toy_params(toy), self.cache_dir) if d.source == "toyworld" else None
        stamps = FileStamps(self.cache_dir / CACHE_NAME if dist.world().main else None)
        files = stamps.stamps(input_files(d.source, Path(d.path) if d.path else None, loaded.questions, toy_root))
        stamps.save()
        return files

    def _load(self, d, toy) -> LoadResult:
        params = self._toy_params(toy)
        return load_questions(
            d.source, d.path, d.images, level=d.level, categories=d.categories, limit=d.limit,
            on_missing_image=d.on_missing_image, toyworld=params, cache_dir=self.cache_dir,
            category_from=getattr(d, "category_from", "program"),
        )

    def _items(self, questions: list[Question], split_of: dict[str, str], stage: str) -> tuple[list[Item], list[str]]:
        """Scorable items, and the ids of questions whose answer the tokenizer cannot score."""
        gold = self.vlm.answer_token_ids([q.answer for q in questions])
        self._answer_of.update({q.qid: q.answer for q in questions})  # for the untokenizable-answer message
        items, empty = [], []
        for q, g in zip(questions, gold):
            if g is None:
                empty.append(q.qid)
                continue
            items.append(Item(q.qid, q.load_image(), q.question, q.answer, g, q.category, split_of.get(q.qid, "")))
        if not items:
            example = f"; e.g. {self.vlm.explain_answer(self._answer_of[empty[0]])}" if empty else ""
            raise VseamError(f"{stage}: no question has an answer the model's tokenizer can score{example}")
        return items, empty

    def _record_untokenizable(self, stage: str, empty: list[str]) -> None:
        if empty:
            self.record({f"{stage}.answers_without_token": len(empty)})
            self.store.put_document(self.run_id, f"{stage}.answers_without_token", empty)
            self.log(f"  {len(empty)} answer(s) tokenize to nothing the model knows; skipped: {', '.join(empty[:5])}"
                     + (" …" if len(empty) > 5 else "") + f"; e.g. {self.vlm.explain_answer(self._answer_of[empty[0]])}")

    def _edits(self, questions: list[Question], base_rows: dict[str, dict]) -> list[trace_stage.EditPair]:
        from vseam_run.stages.edit import EditContext, run_edit_stage

        ctx = EditContext(self.spec, self.store, self.run_id, self.device, self.cache_dir, self.art_dir, self.log, self.record, self.vlm)
        # Split across ranks by whole batches (edits made into the cache, edited images scored): stages/edit.py
        return trace_stage.pairs_of(run_edit_stage(ctx, questions, base_rows).kept)

    def _trace(self, questions: list[Question], pairs: list[trace_stage.EditPair] | None) -> None:
        pairs = trace_stage.procedural_pairs(questions, self.cache_dir) if pairs is None else pairs
        trace_stage.run_trace(self, self.spec.trace, questions, pairs, name=self.spec.name, batch_size=self.spec.batch_size,
                              stream=self.spec.stream)  # split across ranks by whole batches of pairs

    def _search(self, items: list[Item], fp: Fingerprint) -> SearchResult:
        s = self.spec.search
        assert s is not None
        if not items:
            raise VseamError("search: the search split is empty", hint="raise data.split.search or use more questions")
        result = search_heads(
            self.vlm, [SearchItem(it.qid, it.image, it.question, it.gold_id) for it in items],
            strategy=s.strategy, scoring=s.scoring, ablation=s.ablation, top_k=s.top_k, verify_k=s.verify_k,
            batch_size=self.spec.batch_size, batch_rows=s.batch_rows, stream=s.stream or self.spec.stream,
            checkpoint=self.ledger.checkpointer("search", fp),
        )
        return self._record_search(result, items)

    reuse_search = False

    def _search_reuse_key(self, search_fp: Fingerprint, data_fp: Fingerprint) -> Fingerprint:
        from vseam_run.stages import search_reuse

        return search_reuse.reuse_key(search_fp, data_fp, self.spec)

    def _reused_search(self, items: list[Item], fp: Fingerprint, key: Fingerprint | None) -> SearchResult | None:
        """Another run's finished search from exactly these inputs (None: compute it)."""
        if key is None:
            return None
        from vseam_run.stages import search_reuse

        found = search_reuse.find(self.store, self.run_id, self.entry.name, key, fp)
        if found is None:
            self.log("  no earlier run searched from these inputs: searching")
            return None
        other, outputs = found
        self.store.put_document(self.run_id, search_reuse.DOCUMENT, {"run_id": other, "key": key.value})
        self.log(f"  search reused from run {other} (same model, data, edits, search settings, seed and search code)")
        return self._record_search(SearchResult.from_state(outputs), items)

    def _record_search(self, result: SearchResult, items: list[Item]) -> SearchResult:
        """The search's documents, metrics and heatmaps (computed here or reused)."""
        s = self.spec.search
        assert s is not None
        heads = result.to_json()
        self.store.put_document(self.run_id, "heads", heads)
        self.store.put_document(self.run_id, "search.effects", encode_effects(result.qids, result.effects, result.correct,
                                                                              result.base_prob, result.verified))
        unc = head_uncertainty(result.effects, result.correct, s.scoring, s.top_k, n_boot=s.bootstrap,
                               seed=self.spec.seed, allowed=result.verified)
        self.store.put_document(self.run_id, "heads.uncertainty", unc.to_json())
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
            top = {"positive": m.top_positive, "negative": m.top_negative}.get(kind)
            path = report.head_heatmap(matrix, self.art_dir / f"heads_{kind}.png", title=f"{kind} heads — {self.label}",
                                       cbar_label=label, counts=counts, center=center, top=top, significant=unc.excludes_zero(kind))
            self.artifact(f"heatmap.{kind}", path)
        self.log(f"  search {s.strategy}: {result.seconds:.1f}s; top positive {fmt.heads(m.top_positive)}; "
                 f"top negative {fmt.heads(m.top_negative)}")
        return result

    # ---- modulation, evaluation, ablation --------------------------------------------------

    def _stage_settings(self):
        from vseam_run.spec import EvaluateSpec
        from vseam_run.stages.modulate import Settings

        ev = self.spec.evaluate or EvaluateSpec()
        return Settings(self.spec.modulation, ev.protocol, ev.answer_match, ev.control_draws, ev.bootstrap,
                        self.spec.batch_size, self.spec.seed, self.spec.name, self.spec.stream,
                        ev.max_new_tokens, self._generate().rule)

    def _generate(self, source: str | None = None):
        """answer_match generate: the token budget and the benchmark rule (of `source`, default the run's data)."""
        from vseam_run.answers import rule_for_source
        from vseam_run.stages.generated import GenerateSettings

        ev = self.spec.evaluate
        rule = ev.answer_rule if (ev and ev.answer_rule != "auto" and source is None) else rule_for_source(source or self.spec.data.source)
        return GenerateSettings(ev.max_new_tokens if ev else 16, rule)

    def _generate_fp(self, source: str | None = None) -> dict:
        """Fingerprint part of generation settings (empty unless answer_match is generate, so other runs resume)."""
        return {"generate": vars(self._generate(source))} if self._answer_match() == "generate" else {}

    def _sink(self):
        from vseam_run.stages.modulate import Sink

        return Sink(self.record, lambda key, obj: self.store.put_document(self.run_id, key, obj),
                    lambda stage, rows: self.store.log_question_results(self.run_id, stage, rows),
                    self.artifact, self.log, self.art_dir, self.label)

    def _answer_match(self) -> str:
        return self.spec.evaluate.answer_match if self.spec.evaluate else "first_token"

    def _modulate_and_evaluate(self, result: SearchResult, search_fp: Fingerprint, by_split: dict[str, list[Item]]) -> None:
        """Sub-stages, each finished on its own: modulation (the intervention), eval.test and/or eval.in_sample
        (per evaluate.protocol, with random-head controls), eval.<extra>…, ablation. The logic is in
        vseam_run/stages/modulate.py."""
        from vseam_run.stages import modulate as stage

        spec = self.spec
        if not by_split["test"]:
            raise VseamError("evaluate: the test split is empty", hint="raise data.split.test or use more questions")
        settings, sink = self._stage_settings(), self._sink()
        sets = stage.SplitSets(self.vlm, by_split, spec.batch_size, stream=spec.stream)  # encoded when a stage needs one
        mod_fp = fingerprint(search=search_fp, modulation=spec.modulation, questions=items_part(by_split["val"]),
                             batch_size=spec.batch_size, answer_match=settings.answer_match, seed=spec.seed)
        # The policy's intervention (vseam_run/modulation/), kept in the ledger as tensors + metadata.
        scales = self.stage("modulation", mod_fp, lambda: stage.choose(self.vlm, result, sets, settings, sink),
                            save=stage.state_to_saved, load=stage.state_from_saved)
        edits = scales
        for split, prefix, label in stage.protocol_sets(settings.protocol):
            eval_fp = fingerprint(modulation=mod_fp, questions=items_part(by_split[split]), bootstrap=settings.bootstrap,
                                  seed=spec.seed, batch_size=spec.batch_size, controls=settings.control_draws, **self._generate_fp())
            self.stage(prefix, eval_fp, lambda split=split, prefix=prefix, label=label: stage.evaluate_set(
                self.vlm, sets.get(split, f"evaluate.protocol: {settings.protocol}"), scales, prefix, label, settings, sink))
        if len(stage.protocol_sets(settings.protocol)) > 1:
            self.stage("eval.protocols", fingerprint(modulation=mod_fp, protocol=settings.protocol),
                       lambda: stage.side_by_side(self.metrics, scales, settings, sink))
        ev = spec.evaluate
        for extra in (ev.extra if ev else []):
            with dist.main_first():
                extra_loaded = self._load(extra, extra.toyworld)
            extra_fp = fingerprint(modulation=mod_fp, extra=extra, bootstrap=settings.bootstrap, seed=spec.seed,
                                   batch_size=spec.batch_size, **self._generate_fp(extra.source)).with_files(self._file_stamps(extra, extra.toyworld, extra_loaded))
            self.stage(f"eval.{extra.name}", extra_fp,
                       lambda extra=extra, loaded=extra_loaded: self._evaluate_extra(extra, loaded, edits))
        if ev is not None and ev.ablation is not None:
            ablation_fp = fingerprint(search=search_fp, questions=items_part(by_split["test"]), ablation=ev.ablation,
                                      seed=spec.seed, batch_size=spec.batch_size)
            self.stage("ablation", ablation_fp, lambda: self._ablation(result, sets.get("test", "evaluate")))

    def _compare(self, scored: ScoredSet, edits, prefix: str, label: str, source: str | None = None) -> None:
        from dataclasses import replace

        from vseam_run.stages import modulate as stage

        settings = self._stage_settings()
        if source is not None:  # an evaluate.extra set is judged by its own benchmark's rule
            settings = replace(settings, answer_rule=self._generate(source).rule)
        stage.compare(scored, edits, prefix, label, settings, stage.Matcher.for_model(self.vlm, settings.answer_match), self._sink())

    def _evaluate_extra(self, extra: ExtraDataSpec, loaded: LoadResult, edits) -> None:
        items, untokenizable = self._items(loaded.questions, {}, f"eval.{extra.name}")
        self._record_untokenizable(f"eval.{extra.name}", untokenizable)
        scored = ScoredSet(self.vlm, items, self.spec.batch_size, extra.name, stream=self.spec.stream)
        self._compare(scored, edits, f"eval.{extra.name}", extra.name, extra.source)

    def _ablation(self, result: SearchResult, test: ScoredSet) -> None:
        from vseam_run.stages.ablation import run_ablation

        run_ablation(self, result, test, self.spec.evaluate.ablation, scoring=self.spec.search.scoring, seed=self.spec.seed)
