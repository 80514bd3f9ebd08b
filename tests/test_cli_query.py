"""`vseam runs`, `show` and `compare` against a registry built through the store API.

The commands run in-process on a small Typer app holding only these three, with the same
error handling as `vseam_run.cli.main.cli` (VseamError → message, exit 2), so this file
does not depend on the other command modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from vseam_run.cli import compare, runs, show
from vseam_run.cli.main import run_app
from vseam_run.store import RunStore

SPEC_A = """\
name: quick
model: toy-llava
seed: 0
search:
  strategy: batched
  ablation: mean
modulation:
  lambda: 1.0
  clip: [0.0, 2.0]
"""
SPEC_B = SPEC_A.replace("lambda: 1.0", "lambda: 2.0").replace("ablation: mean", "ablation: zero")


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("runs")(runs.runs)
    app.command("show")(show.show)
    app.command("compare")(compare.compare)
    return app


def invoke(argv: list[str]) -> int:
    """Run one command like `vseam` does (VseamError and usage errors print and return 2)."""
    return run_app(_app(), argv)


@pytest.fixture
def registry(tmp_path: Path) -> tuple[str, str, str]:
    """A registry with an older succeeded run A and a newer failed run B."""
    db = str(tmp_path / "runs.db")
    with RunStore(db) as store:
        a = store.create_run(
            name="quick", spec_yaml=SPEC_A, spec_hash="ha", model_name="toy-llava",
            model_entry_yaml="name: toy-llava\n", model_hash="mh", versions={"torch": "2.13.0"},
            device="cpu", seed=0,
        )  # fmt: skip
        store.log_metrics(a, {"baseline.accuracy": 0.5, "eval.test.accuracy.modulated": 0.6, "only_a": 1.0})
        store.put_document(a, "heads", {"positive": [[0.1, 0.2], [0.3, 0.4]]})
        store.set_status(a, "succeeded")
        b = store.create_run(
            name="quick-lambda2", spec_yaml=SPEC_B, spec_hash="hb", model_name="toy-llava",
            model_entry_yaml="name: toy-llava\n", model_hash="mh", versions={"torch": "2.13.0"},
            device="cpu", seed=0,
        )  # fmt: skip
        store.log_metrics(b, {"baseline.accuracy": 0.5, "eval.test.accuracy.modulated": 0.75})
        store.put_document(b, "heads", {"positive": [[1.0]]})
        store.put_document(b, "metrics", {"clash": True})  # must not hide the real metrics
        store.log_question_results(b, "baseline", [{"qid": "q1", "correct": True}, {"qid": "q2", "correct": False}])
        store.set_status(b, "failed", error_message="boom", error_traceback="Traceback: boom")
    return db, a, b


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    capsys.readouterr()
    assert invoke(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_runs_json_newest_first(registry: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    db, a, b = registry
    listed = _json(capsys, ["runs", "--db", db, "--json"])
    assert [r["run_id"] for r in listed] == [b, a]
    first = listed[0]
    assert {"run_id", "name", "status", "model", "created_at", "finished_at", "metrics"} <= set(first)
    assert (first["name"], first["status"], first["model"]) == ("quick-lambda2", "failed", "toy-llava")
    assert first["metrics"] == {"baseline.accuracy": 0.5, "eval.test.accuracy.modulated": 0.75}
    assert first["finished_at"] is not None
    assert [r["run_id"] for r in _json(capsys, ["runs", "--db", db, "--json", "--limit", "1"])] == [b]


def test_show_latest_json(registry: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    db, a, b = registry
    shown = _json(capsys, ["show", "latest", "--db", db, "--json"])
    assert shown["run_id"] == b and shown["status"] == "failed"
    assert shown["metrics"] == {"baseline.accuracy": 0.5, "eval.test.accuracy.modulated": 0.75}
    assert shown["spec"]["modulation"] == {"lambda": 2.0, "clip": [0.0, 2.0]}
    assert (shown["model"], shown["device"], shown["seed"]) == ("toy-llava", "cpu", 0)
    assert shown["error"] == {"message": "boom", "traceback": "Traceback: boom"}
    assert shown["heads"] == {"positive": [[1.0]]}
    assert shown["documents"] == {"metrics": {"clash": True}}
    assert shown["question_results"] == {"baseline": {"questions": 2, "correct": 1}}

    # The older run by the shortest prefix that is not also B's.
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    by_prefix = _json(capsys, ["show", a[: common + 1], "--db", db, "--json"])
    assert by_prefix["run_id"] == a and by_prefix["error"] is None and by_prefix["heads"]["positive"][1] == [0.3, 0.4]


def test_compare_json(registry: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    db, a, b = registry
    result = _json(capsys, ["compare", a, b, "--db", db, "--json"])
    assert (result["a"], result["b"]) == (a, b)
    assert result["spec_diff"] == [
        {"field": "modulation.lambda", "a": 1.0, "b": 2.0},
        {"field": "search.ablation", "a": "mean", "b": "zero"},
    ]
    metrics = {m["name"]: m for m in result["metrics"]}
    assert metrics["eval.test.accuracy.modulated"]["delta"] == pytest.approx(0.15)
    assert metrics["baseline.accuracy"]["delta"] == 0.0
    assert metrics["only_a"] == {"name": "only_a", "a": 1.0, "b": None, "delta": None}


def test_tables_render(registry: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    db, a, b = registry
    for argv in (["runs", "--db", db], ["show", "latest", "--db", db], ["compare", a, "latest", "--db", db]):
        capsys.readouterr()
        assert invoke(argv) == 0
        out = capsys.readouterr().out
        assert b in out
    assert invoke(["show", "latest", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "boom" in out and "--json" in out  # the error, and where the traceback is


def test_unknown_run_exits_2(registry: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    db, _, _ = registry
    assert invoke(["show", "no-such-run", "--db", db]) == 2
    assert "no-such-run" in capsys.readouterr().err
    assert invoke(["compare", "latest", "nope", "--db", db, "--json"]) == 2
    captured = capsys.readouterr()
    assert "'nope'" in captured.err and captured.out == ""


def test_missing_registry_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "absent.db"
    assert invoke(["runs", "--db", str(db)]) == 2
    assert "no run registry at" in capsys.readouterr().err
    assert not db.exists()
