"""The run registry: lifecycle, upserts, checkpoints, documents, references, bad locations."""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from vseam_run.errors import VseamError
from vseam_run.store import SCHEMA_VERSION, RunStore

SPEC = "name: quick\nmodel: toy-llava\nseed: 0\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    s = RunStore(str(tmp_path / "runs.db"))
    yield s
    s.close()


def _new_run(store: RunStore, name: str = "quick") -> str:
    return store.create_run(
        name=name,
        spec_yaml=SPEC,
        spec_hash="abc123",
        model_name="toy-llava",
        model_entry_yaml="name: toy-llava\n",
        model_hash="m-hash",
        versions={"torch": "2.13.0"},
        device="cpu",
        seed=0,
    )


def test_lifecycle(store: RunStore, tmp_path: Path) -> None:
    run_id = _new_run(store)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id)
    rec = store.get_run(run_id)
    assert (rec.status, rec.finished_at, rec.versions, rec.seed) == ("running", None, {"torch": "2.13.0"}, 0)

    store.log_metrics(run_id, {"baseline.accuracy": 0.75, "baseline.n": 4})
    rows = [
        {"qid": 1, "split": "test", "category": "color", "gold": "red", "pred": "red", "correct": True,
         "gold_prob": 0.8, "extra": {"edit": "red->green"}},
        {"qid": "q2", "split": "test", "category": "color", "gold": "blue", "pred": "red", "correct": False,
         "gold_prob": 0.1},
    ]  # fmt: skip
    store.log_question_results(run_id, "baseline", rows)
    # Logging a stage again replaces it rather than doubling it.
    store.log_question_results(run_id, "baseline", rows)
    got = store.question_results(run_id, "baseline")
    assert [r["qid"] for r in got] == ["1", "q2"]
    assert got[0]["correct"] is True and got[0]["extra"] == {"edit": "red->green"}
    assert got[1]["extra"] is None and got[1]["gold_prob"] == pytest.approx(0.1)
    assert store.question_stages(run_id)["baseline"] == (2, 1)

    artifact = tmp_path / "heads.png"
    artifact.write_bytes(b"\x89PNG fake heatmap")
    digest = store.add_artifact(run_id, "heatmap", artifact)
    assert digest == hashlib.sha256(b"\x89PNG fake heatmap").hexdigest()

    store.set_status(run_id, "succeeded")
    rec = store.get_run(run_id)
    assert rec.status == "succeeded"
    assert rec.finished_at is not None and rec.duration_s is not None and rec.duration_s >= 0
    assert rec.metrics == {"baseline.accuracy": 0.75, "baseline.n": 4.0}
    assert [(a.kind, Path(a.path), a.sha256) for a in rec.artifacts] == [("heatmap", artifact.resolve(), digest)]
    assert rec.spec() == {"name": "quick", "model": "toy-llava", "seed": 0}


def test_failure_records_error_and_resume_clears_it(store: RunStore) -> None:
    run_id = _new_run(store)
    store.set_status(run_id, "failed", error_message="CUDA out of memory", error_traceback="Traceback ...")
    rec = store.get_run(run_id)
    assert (rec.status, rec.error_message, rec.error_traceback) == ("failed", "CUDA out of memory", "Traceback ...")
    store.mark_resumed(run_id)
    rec = store.get_run(run_id)
    assert (rec.status, rec.finished_at, rec.error_message, rec.resume_count) == ("running", None, None, 1)
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_status(run_id, "done")


def test_metrics_upsert_and_nan(store: RunStore) -> None:
    run_id = _new_run(store)
    store.log_metrics(run_id, {"a": 1.0, "b": 2.0})
    store.log_metrics(run_id, {"b": 3.5, "c": float("nan")})
    metrics = store.get_run(run_id).metrics
    assert metrics["a"] == 1.0 and metrics["b"] == 3.5 and math.isnan(metrics["c"])
    assert store.get_run(run_id).metric("c") is None


def test_update_spec_and_summary(store: RunStore) -> None:
    run_id = _new_run(store)
    store.update_spec(run_id, "name: quick\nseed: 1\n", "def456")
    store.set_summary(run_id, {"best_lambda": 1.0})
    rec = store.get_run(run_id)
    assert (rec.spec(), rec.spec_hash, rec.summary) == ({"name": "quick", "seed": 1}, "def456", {"best_lambda": 1.0})


def test_checkpoints_upsert_load_delete(store: RunStore) -> None:
    run_id = _new_run(store)
    store.save_checkpoint(run_id, "heads", "layer.0", {"scores": [0.1, 0.2]})
    store.save_checkpoint(run_id, "heads", "layer.1", {"scores": [0.3, 0.4]})
    store.save_checkpoint(run_id, "heads", "layer.0", {"scores": [0.5, 0.6]})  # overwrite
    store.save_checkpoint(run_id, "trace", "layer.0", [1, 2])
    assert store.load_checkpoints(run_id, "heads") == {
        "layer.0": {"scores": [0.5, 0.6]},
        "layer.1": {"scores": [0.3, 0.4]},
    }
    assert store.delete_checkpoints(run_id, "heads") == 2
    assert store.load_checkpoints(run_id, "heads") == {}
    assert store.load_checkpoints(run_id, "trace") == {"layer.0": [1, 2]}


def test_documents(store: RunStore) -> None:
    run_id = _new_run(store)
    assert store.get_document(run_id, "heads") is None
    store.put_document(run_id, "heads", {"positive": [[0.0, 1.0]], "shape": (1, 2)})
    store.put_document(run_id, "heads", {"positive": [[2.0, 3.0]]})
    store.put_document(run_id, "trace", [1, 2, 3])
    assert store.get_document(run_id, "heads") == {"positive": [[2.0, 3.0]]}
    assert store.documents(run_id) == {"heads": {"positive": [[2.0, 3.0]]}, "trace": [1, 2, 3]}


def test_resolve_latest_prefix_unknown(store: RunStore) -> None:
    with pytest.raises(VseamError, match="no runs in"):
        store.resolve("latest")
    first = _new_run(store, "first")
    second = _new_run(store, "second")
    assert store.resolve("latest") == second
    assert [r.id for r in store.list_runs()] == [second, first]
    assert store.resolve(first) == first
    # The shortest prefix that tells the two apart resolves; the shared one is ambiguous.
    common = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
    assert store.resolve(first[: common + 1]) == first
    with pytest.raises(VseamError, match="ambiguous"):
        store.resolve(first[:common])
    typo = first[:-1] + ("0" if first[-1] != "0" else "1")
    with pytest.raises(VseamError) as err:
        store.resolve(typo)
    message = str(err.value)
    assert f"no run '{typo}'" in message and "did you mean" in message and first in message
    assert "vseam runs" in message
    # LIKE wildcards in user input must not match everything.
    with pytest.raises(VseamError, match="no run '%'"):
        store.resolve("%")


def test_unknown_run_on_write_is_clear(store: RunStore) -> None:
    with pytest.raises(VseamError, match="no run 'nope'"):
        store.log_metrics("nope", {"a": 1.0})


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    RunStore(str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(VseamError, match="newer"):
        RunStore(str(path))


def test_foreign_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(VseamError, match="not a vseam run registry"):
        RunStore(str(path))


def test_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "runs.db"
    with pytest.raises(VseamError) as err:
        RunStore(str(target))
    assert str(target) in str(err.value) and "--db" in str(err.value)


def test_missing_registry_not_created_for_queries(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "runs.db"
    with pytest.raises(VseamError, match="no run registry at"):
        RunStore(str(path), must_exist=True)
    assert not path.exists() and not path.parent.exists()


def test_parent_folders_created_and_url_and_memory(tmp_path: Path) -> None:
    nested = tmp_path / "results" / "runs.db"
    with RunStore(str(nested)) as s:
        _new_run(s)
    assert nested.is_file()
    with RunStore(f"sqlite:///{nested}") as s:
        assert len(s.list_runs()) == 1
    with RunStore(":memory:") as s:
        assert s.list_runs() == []
