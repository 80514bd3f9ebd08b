"""Exact resume: a run interrupted at any stage boundary, or in the middle of a stage, and
then resumed, ends with exactly what an uninterrupted run records — every metric but the
timings, every document, every per-question row, every artifact — and the rows its finished
stages stored are never written again. Plus: what a resume refuses (a changed --set, changed
model weights).

The whole matrix runs on a tiny LLaVA (3 layers × 4 heads) and a small toy world.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from vseam_run import pipeline
from vseam_run.stages import ablation as ablation_stage
from vseam_run.cli.main import cli
from vseam_run.ledger import StageCheckpointer, StageLedger
from vseam_run.store import RunStore

SPEC = """\
name: resume
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 8}}, limit: 16}}
edit: {{recipe: procedural}}
search: {{strategy: exact, scoring: signed}}
# λ chosen on val from a one-value grid: the selection runs, and the modulation is not the
# identity (a random tiny model answers nothing right, so a wider grid would tie at λ = 0).
modulation: {{policy: linear, lam: auto, grid: [4.0]}}
evaluate:
  bootstrap: 100
  protocol: both
  control_draws: 2
  ablation: {{k: 2, trials: 2}}
  extra: [{{name: more, source: toyworld, toyworld: {{images: 4, seed: 3}}, limit: 6}}]
"""

TIMING = ("time.", "search.seconds")


def run_cli(*argv: Any) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli([str(a) for a in argv])
    return rc, out.getvalue()


@dataclass
class Snapshot:
    """Everything a run recorded, timings aside, in comparable form."""

    status: str
    spec_yaml: str
    metrics: dict[str, float]
    documents: dict[str, Any]
    rows: dict[str, list[dict]]
    artifacts: dict[str, str]  # kind → sha256 (figures: their file type; their titles carry the run id)

    @classmethod
    def of(cls, db: Path, run_id: str) -> "Snapshot":
        with RunStore(db) as store:
            rec = store.get_run(run_id)
            rows: dict[str, list[dict]] = {}
            for row in store.question_results(run_id):
                rows.setdefault(row["stage"], []).append(row)
            return cls(
                rec.status, rec.spec_yaml,
                {k: v for k, v in rec.metrics.items() if not k.startswith(TIMING)},
                store.documents(run_id), rows, {a.kind: _content(a) for a in rec.artifacts},
            )


def _content(artifact) -> str:
    """What must be equal between two runs: a file's bytes, except a figure's, whose title names
    its run (two runs never draw byte-identical figures); a figure is compared by kind and type."""
    suffix = Path(artifact.path).suffix.lower()
    return f"figure{suffix}" if suffix in (".png", ".svg", ".pdf") else artifact.sha256


def stored_ids(db: Path, run_id: str) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Row ids per question stage and documents' update times: rewriting changes them."""
    with sqlite3.connect(db) as conn:
        rows: dict[str, list[int]] = {}
        for row_id, stage in conn.execute("SELECT id, stage FROM question_results WHERE run_id = ? ORDER BY id", (run_id,)):
            rows.setdefault(stage, []).append(row_id)
        docs = dict(conn.execute("SELECT key, updated_at FROM documents WHERE run_id = ?", (run_id,)))
    return rows, docs


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_llava_entry) -> Path:
    path = tmp_path_factory.mktemp("resume")
    (path / "spec.yaml").write_text(SPEC.format(model=tiny_llava_entry))
    return path


@pytest.fixture(scope="module")
def uninterrupted(folder) -> Snapshot:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        rc, out = run_cli("run", "spec.yaml", "--db", "full.db")
        assert rc == 0, out
        with RunStore(folder / "full.db") as store:
            (run,) = store.list_runs()
    snap = Snapshot.of(folder / "full.db", run.id)
    # The comparison below is only worth something if the run did everything.
    assert {"baseline", "edited", "eval.test.baseline", "eval.test.modulated", "eval.more.modulated"} <= set(snap.rows)
    assert {"heads", "modulation", "lambda_selection", "ablation", "eval.test.summary", "eval.more.summary",
            "eval.in_sample.summary", "eval.protocols"} <= set(snap.documents)
    assert "ablation.positive.accuracy_drop" in snap.metrics and snap.metrics["modulation.lambda"] == 4.0
    base = {r["qid"]: r["gold_prob"] for r in snap.rows["eval.test.baseline"]}
    assert any(r["gold_prob"] != base[r["qid"]] for r in snap.rows["eval.test.modulated"]), "modulation changed nothing"
    return snap


# --- where to interrupt ------------------------------------------------------------------------


def after_stage(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Ctrl-C right after stage `name` is recorded as finished."""

    def install(mp: pytest.MonkeyPatch) -> None:
        real = StageLedger.mark

        def mark(self, stage, fp, outputs=None):
            real(self, stage, fp, outputs)
            if stage == name:
                raise KeyboardInterrupt

        mp.setattr(StageLedger, "mark", mark)

    return install


def after_search_layers(n: int) -> Callable[[pytest.MonkeyPatch], None]:
    """Ctrl-C once `n` layers of the head search are checkpointed (3 = every layer)."""

    def install(mp: pytest.MonkeyPatch) -> None:
        real, saved = StageCheckpointer.save, []

        def save(self, key, payload):
            real(self, key, payload)
            saved.append(key)
            if len(saved) == n:
                raise KeyboardInterrupt

        mp.setattr(StageCheckpointer, "save", save)

    return install


def after_rows(stage: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Ctrl-C inside a stage, right after it stored the per-question rows `stage`."""

    def install(mp: pytest.MonkeyPatch) -> None:
        real = RunStore.log_question_results

        def log(self, run_id, name, rows):
            real(self, run_id, name, rows)
            if name == stage:
                raise KeyboardInterrupt

        mp.setattr(RunStore, "log_question_results", log)

    return install


def during_ablation(calls: int) -> Callable[[pytest.MonkeyPatch], None]:
    """Ctrl-C when the ablation validation builds its `calls`-th set of ablated heads."""

    def install(mp: pytest.MonkeyPatch) -> None:
        real, n = ablation_stage.ablate_heads_edits, []

        def ablate(*args, **kwargs):
            n.append(1)
            if len(n) == calls:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        mp.setattr(ablation_stage, "ablate_heads_edits", ablate)

    return install


ALL_LAYERS = ["exact:0", "exact:1", "exact:2"]

# (case id, how to interrupt, search layers the resume computes, question stages an
# unfinished stage may rewrite on resume). Every stage boundary, and inside the stages that
# store rows or checkpoints before they finish.
CASES = [
    ("after-data", after_stage("data"), ALL_LAYERS, set()),
    ("after-baseline", after_stage("baseline"), ALL_LAYERS, set()),
    # The unfinished edit stage runs again and rewrites what it had written: its rows and documents.
    ("during-edit", after_rows("edited"), ALL_LAYERS, {"edited", "edits", "edit.skipped", "edit.summary"}),
    ("after-edit", after_stage("edit"), ALL_LAYERS, set()),
    ("mid-search-after-layer-1", after_search_layers(2), ["exact:2"], set()),
    ("search-every-layer-stored", after_search_layers(3), [], set()),
    ("after-search", after_stage("search"), [], set()),
    ("after-modulation", after_stage("modulation"), [], set()),
    ("during-eval-test", after_rows("eval.test.baseline"), [], {"eval.test.baseline"}),
    ("after-eval-test", after_stage("eval.test"), [], set()),
    ("after-eval-in-sample", after_stage("eval.in_sample"), [], set()),
    ("after-eval-extra", after_stage("eval.more"), [], set()),
    ("during-ablation", during_ablation(3), [], set()),
    ("after-ablation", after_stage("ablation"), [], set()),
]


@pytest.mark.parametrize("install, computed_layers, rewritable", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_interrupt_and_resume_equals_uninterrupted(
    folder, uninterrupted, install, computed_layers, rewritable, monkeypatch, tmp_path
):
    monkeypatch.chdir(folder)
    db = tmp_path / "runs.db"
    with monkeypatch.context() as mp:
        install(mp)
        rc, out = run_cli("run", "spec.yaml", "--db", db)
    assert rc == 130, out
    with RunStore(db) as store:
        (run,) = store.list_runs()
    assert run.status == "interrupted" and f"vseam run --resume {run.id}" in out
    before_rows, before_docs = stored_ids(db, run.id)

    saved: list[str] = []
    real_save = StageCheckpointer.save
    monkeypatch.setattr(StageCheckpointer, "save", lambda self, k, p: (saved.append(k), real_save(self, k, p)))
    rc, out = run_cli("run", "--resume", run.id, "--db", db)
    assert rc == 0, out
    assert saved == computed_layers  # stored search layers are not computed again
    resumed = Snapshot.of(db, run.id)
    assert resumed.status == "succeeded"
    assert resumed.spec_yaml == uninterrupted.spec_yaml
    assert resumed.metrics == uninterrupted.metrics
    assert resumed.documents == uninterrupted.documents
    assert resumed.rows.keys() == uninterrupted.rows.keys()
    for stage, rows in uninterrupted.rows.items():
        assert resumed.rows[stage] == rows, stage
    assert resumed.artifacts == uninterrupted.artifacts

    # What finished before the interruption was not written again.
    after_rows_, after_docs = stored_ids(db, run.id)
    for stage, ids in before_rows.items():
        if stage not in rewritable:
            assert after_rows_[stage] == ids, f"rows of finished stage {stage} were rewritten"
    for key, stamp in before_docs.items():
        if key not in rewritable:
            assert after_docs[key] == stamp, f"document {key} of a finished stage was rewritten"


# --- what a resume refuses -----------------------------------------------------------------------


@pytest.fixture
def interrupted_after_baseline(folder, monkeypatch, tmp_path) -> tuple[Path, str]:
    monkeypatch.chdir(folder)
    db = tmp_path / "runs.db"
    with monkeypatch.context() as mp:
        after_stage("baseline")(mp)
        assert run_cli("run", "spec.yaml", "--db", db)[0] == 130
    with RunStore(db) as store:
        (run,) = store.list_runs()
    return db, run.id


@pytest.mark.parametrize("setting, field", [
    ("search.ablation=zero", "search.ablation"),
    ("data.toyworld.images=120", "data.toyworld.images"),
    ("batch_size=2", "batch_size"),
])  # fmt: skip
def test_resume_refuses_a_changed_setting(interrupted_after_baseline, capsys, setting, field):
    db, run_id = interrupted_after_baseline
    rows_before = stored_ids(db, run_id)
    with RunStore(db) as store:
        spec_before = store.get_run(run_id).spec_yaml
    capsys.readouterr()
    rc = cli(["run", "--resume", run_id, "--db", str(db), "--set", setting])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err, err
    assert err.startswith("error:") and field in err and "new run" in err, err
    with RunStore(db) as store:
        rec = store.get_run(run_id)
    assert rec.status == "interrupted" and rec.spec_yaml == spec_before and rec.resume_count == 0
    assert stored_ids(db, run_id) == rows_before  # nothing touched


def test_resume_allows_a_set_that_changes_nothing(interrupted_after_baseline, capsys, monkeypatch):
    db, run_id = interrupted_after_baseline
    monkeypatch.setattr(StageLedger, "run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    rc = cli(["run", "--resume", run_id, "--db", str(db), "--set", "search.ablation=mean", "--set", "batch_size=8"])
    out, err = capsys.readouterr()
    assert rc == 130 and "resuming run" in out, out + err  # accepted; stopped at its first stage
    with RunStore(db) as store:
        assert store.get_run(run_id).resume_count == 1


def test_resume_refuses_changed_model_weights(tmp_path, tiny_llava_entry, monkeypatch):
    """Same spec, but the checkpoint was retrained in place: finished stages no longer match."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_llava_entry.parent / "ckpt", model / "ckpt")
    shutil.copy(tiny_llava_entry, model / "tiny-llava.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC.format(model=model / "tiny-llava.yaml"))
    with monkeypatch.context() as mp:
        after_stage("baseline")(mp)
        assert run_cli("run", "spec.yaml", "--db", "runs.db")[0] == 130
    config = model / "ckpt" / "config.json"
    config.write_text(config.read_text() + "\n")  # any change to the checkpoint's files
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli(["run", "--resume", "latest", "--db", "runs.db"])
    assert rc == 2, out.getvalue() + err.getvalue()
    assert "stage 'data'" not in err.getvalue()  # the questions did not change
    assert "stage 'baseline'" in err.getvalue() and "the model" in err.getvalue() and "new run" in err.getvalue()
    with RunStore(tmp_path / "runs.db") as store:
        (run,) = store.list_runs()
        assert run.status == "failed" and "stage 'baseline'" in run.error_message
        assert len(store.question_results(run.id, "baseline")) == run.metrics["data.questions"]
