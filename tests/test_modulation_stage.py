"""The modulation stage end to end on a tiny LLaVA: the paper's policy chosen on val, the
in-sample and held-out protocols side by side, the random-head control, the yes/no measures
under the variants rule; and the learned policy through the same stage."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from vseam_run.cli.main import cli
from vseam_run.spec import Spec
from vseam_run.store import RunStore

SPEC = """\
name: stage
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, level: object, toyworld: {{images: 24}}}}
search: {{strategy: exact, scoring: signed}}
modulation: {modulation}
evaluate: {{bootstrap: 200, protocol: {protocol}, answer_match: variants, control_draws: 2}}
"""


def _run(folder: Path, entry: Path, modulation: str, protocol: str) -> tuple[dict, RunStore, str, str]:
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(model=entry, modulation=modulation, protocol=protocol))
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(folder)
        rc = cli(["run", str(spec), "--db", str(folder / "runs.db")])
    assert rc == 0, out.getvalue()
    store = RunStore(folder / "runs.db")
    (record,) = store.list_runs()
    return store.get_run(record.id).metrics, store, record.id, out.getvalue()


def test_paper_policy_both_protocols(tmp_path, tiny_llava_entry):
    m, store, run, out = _run(tmp_path, tiny_llava_entry, "{policy: paper, k_grid: [1, 4], grid: [0, 0.5]}", "both")
    with store:
        sel = store.get_document(run, "paper_selection")
        doc = store.get_document(run, "modulation")
        side = store.get_document(run, "eval.protocols")
        in_rows = store.question_results(run, "eval.in_sample.baseline")
    assert [(r["k"], r["lam"]) for r in sel] == [(1, 0.0), (1, 0.5), (4, 0.0), (4, 0.5)]
    assert doc["policy"] == "paper" and doc["answer_match"] == "variants" and doc["protocol"] == "both"
    assert (doc["k"], doc["lambda"]) in {(1, 0.0), (1, 0.5), (4, 0.0), (4, 0.5)}
    # In-sample = the search split's questions; held-out = the test split's.
    assert m["eval.in_sample.n"] == m["data.search"] == len(in_rows) and m["eval.test.n"] == m["data.test"]
    assert {r["split"] for r in in_rows} == {"search"}
    assert [r["evaluated on"] for r in side] == ["held-out test", "in-sample (search split)"]
    assert side[0]["gain"] == pytest.approx(m["eval.test.accuracy.modulated"] - m["eval.test.accuracy.baseline"])
    # Object questions are yes/no: the benchmark measures are recorded for both sets.
    for prefix in ("eval.test", "eval.in_sample"):
        for measure in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert f"{prefix}.yesno.{measure}.baseline" in m
        assert m[f"{prefix}.yesno.accuracy.baseline"] == pytest.approx(m[f"{prefix}.accuracy.baseline"])
    if doc["lambda"] > 0:
        assert m["eval.test.control.draws"] == 2 and "eval.in_sample.control.gain_mean" in m
    assert "in-sample vs held-out gain" in out


def test_learned_policy_through_the_stage(tmp_path, tiny_llava_entry):
    m, store, run, out = _run(tmp_path, tiny_llava_entry, "{policy: learned, epochs: 2, patience: 2, lr: 0.2}", "held_out")
    with store:
        hist = store.get_document(run, "learned_history")
        doc = store.get_document(run, "modulation")
    assert [h["epoch"] for h in hist] == list(range(len(hist))) and 1 < len(hist) <= 3
    assert doc["policy"] == "learned" and doc["best_epoch"] == m["modulation.learned.best_epoch"]
    assert "eval.test.accuracy.modulated" in m and "eval.in_sample.n" not in m


def test_spec_accepts_and_checks_the_new_fields():
    base = {"name": "x", "model": "toy-llava", "data": {"source": "toyworld"}, "search": {}}
    s = Spec.model_validate({**base, "modulation": {"policy": "paper"}, "evaluate": {"protocol": "both"}})
    assert s.modulation.k == "auto" and s.modulation.lam == "auto" and 0.0 in s.modulation.grid
    assert s.evaluate.answer_match == "first_token" and s.evaluate.control_draws == 5
    for bad in ({"policy": "paper", "lam": -1}, {"policy": "paper", "k_grid": [0]}, {"policy": "paper", "grid": [0, float("inf")]}, {"policy": "learned", "clip": [1.2, 2]},
                {"policy": "learned", "lam": 1}):
        with pytest.raises(Exception):
            Spec.model_validate({**base, "modulation": bad})
    with pytest.raises(Exception):
        Spec.model_validate({**base, "evaluate": {"protocol": "test_only"}})
